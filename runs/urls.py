from django.urls import path

from . import views
from . import views_compare as compare

urlpatterns = [
    path("", views.home, name="home"),
    path("experiments/<int:experiment_id>/compare/", compare.experiment_compare, name="experiment_compare"),
    path("experiments/<int:experiment_id>/report.html", compare.report_html, name="experiment_report"),
    path("experiments/<int:experiment_id>/summary.json", compare.summary_json, name="experiment_summary_json"),
    path("experiments/<int:experiment_id>/summary.csv", compare.summary_csv, name="experiment_summary_csv"),
    path("experiments/import-paper/", compare.paper_import_upload, name="paper_import"),
]
