from django.contrib import admin

from .models import Mechanism, MechanismAttachment, MechanismEvent, ResearchSession

admin.site.register(Mechanism)
admin.site.register(MechanismAttachment)
admin.site.register(MechanismEvent)
admin.site.register(ResearchSession)
