from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs and experiments"

    def ready(self) -> None:
        # The engine listens to Level 2 (which never imports the engine): live events, and
        # resuming a run that waited for a session or a review.
        from mechanisms.signals import attachment_changed, review_context, session_finished

        from .analysis.credit import credit_for_review
        from .engine.level2 import on_attachment_changed, on_session_finished

        attachment_changed.connect(on_attachment_changed, dispatch_uid="runs.engine.level2.attachment_changed")
        session_finished.connect(on_session_finished, dispatch_uid="runs.engine.level2.session_finished")
        # The review page of a new proposal shows the credit its kind earned in earlier runs.
        review_context.connect(credit_for_review, dispatch_uid="runs.analysis.credit.review_context")
