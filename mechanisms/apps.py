from django.apps import AppConfig


class MechanismsConfig(AppConfig):
    name = "mechanisms"
    verbose_name = "Level 2 mechanisms"
