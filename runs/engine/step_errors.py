"""Why a step stops without recording anything (shared by the engine and the end-of-run confirmation)."""


class StepAborted(Exception):
    """The run was paused/cancelled or the lease was lost while training: drop this iteration."""
