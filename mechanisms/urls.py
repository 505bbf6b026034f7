from django.urls import path

from . import views

urlpatterns = [
    path("review/", views.review_queue, name="review_queue"),
    path("library/", views.library, name="mechanism_library"),
    path("library/<int:mechanism_id>/attach/", views.library_attach, name="mechanism_library_attach"),
    path("<int:attachment_id>/", views.attachment_detail, name="mechanism_review"),
    path("<int:attachment_id>/approve/", views.attachment_action, {"action": "approve"}, name="mechanism_approve"),
    path("<int:attachment_id>/reject/", views.attachment_action, {"action": "reject"}, name="mechanism_reject"),
    path("<int:attachment_id>/kill/", views.attachment_action, {"action": "kill"}, name="mechanism_kill"),
]
