from django.urls import path

from .web import views
from .web import views_clone as clone
from .web import views_compare as compare
from .web import views_diff as diff
from .web import views_library as library
from .web import views_manage as manage
from .web import views_paper_import as paper_import
from .web import views_tokens as tokens

urlpatterns = [
    path("", views.home, name="home"),
    path("mechanisms/library/", library.library, name="mechanism_library"),
    path("mechanisms/library/<int:mechanism_id>/attach/", library.library_attach, name="mechanism_library_attach"),
    path("experiments/new/", views.experiment_new, name="experiment_new"),
    path("experiments/<int:experiment_id>/", views.experiment_detail, name="experiment_detail"),
    path("experiments/<int:experiment_id>/archive/", manage.experiment_archive, name="experiment_archive"),
    path("experiments/<int:experiment_id>/delete/", manage.experiment_delete, name="experiment_delete"),
    path("runs/<int:run_id>/annotate/", manage.run_annotate, name="run_annotate"),
    path("experiments/<int:experiment_id>/clone/", clone.experiment_clone, name="experiment_clone"),
    path("experiments/<int:experiment_id>/iterations/", views.experiment_iterations, name="experiment_iterations"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/snapshot.json", views.run_snapshot_json, name="run_snapshot"),
    path("runs/<int:run_id>/iterations/", views.run_iterations, name="run_iterations"),
    path("runs/<int:run_id>/pause/", views.run_action, {"action": "pause"}, name="run_pause"),
    path("runs/<int:run_id>/resume/", views.run_action, {"action": "resume"}, name="run_resume"),
    path("runs/<int:run_id>/cancel/", views.run_action, {"action": "cancel"}, name="run_cancel"),
    path("runs/<int:run_id>/replays/", views.run_replays_offer, name="run_replays_offer"),
    path("experiments/<int:experiment_id>/compare/", compare.experiment_compare, name="experiment_compare"),
    path("experiments/<int:experiment_id>/report.html", compare.report_html, name="experiment_report"),
    path("experiments/<int:experiment_id>/summary.json", compare.summary_json, name="experiment_summary_json"),
    path("experiments/<int:experiment_id>/summary.csv", compare.summary_csv, name="experiment_summary_csv"),
    path("experiments/import-paper/", paper_import.paper_import_upload, name="paper_import"),
    path("diff/", diff.config_diff, name="config_diff"),
    path("settings/tokens/", tokens.api_tokens, name="api_tokens"),
    path("settings/tokens/<int:token_id>/revoke/", tokens.api_token_revoke, name="api_token_revoke"),
]
