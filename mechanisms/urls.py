from django.urls import path

from . import views

urlpatterns = [
    path("review/", views.review_queue, name="review_queue"),
    path("<int:attachment_id>/", views.attachment_detail, name="mechanism_review"),
    path("<int:attachment_id>/approve/", views.attachment_action, {"action": "approve"}, name="mechanism_approve"),
    path("<int:attachment_id>/reject/", views.attachment_action, {"action": "reject"}, name="mechanism_reject"),
    path("<int:attachment_id>/kill/", views.attachment_action, {"action": "kill"}, name="mechanism_kill"),
]
