"""Synthetic traces and states for the mechanism core tests."""

from __future__ import annotations

from typing import Any

from mechanisms.protocol import MechanismSource, State, TraceRecord

SEARCH_SPACE: list[dict[str, Any]] = [
    {"name": "MATRIX_LR", "type": "float", "min": 0.001, "max": 0.2, "choices": None, "log": True, "locked": False,
     "default": 0.04, "description": "Muon learning rate"},
    {"name": "DEPTH", "type": "int", "min": 1, "max": 12, "choices": None, "log": False, "locked": False,
     "default": 4, "description": "layers"},
    {"name": "WARMDOWN_RATIO", "type": "float", "min": 0.0, "max": 1.0, "choices": None, "log": False,
     "locked": False, "default": 0.5, "description": "warmdown fraction"},
    {"name": "WEIGHT_DECAY", "type": "float", "min": 0.0, "max": 0.5, "choices": None, "log": False,
     "locked": False, "default": 0.2, "description": "weight decay"},
]
PARAMS = [p["name"] for p in SEARCH_SPACE]


def record(iteration: int, changes: dict[str, tuple[Any, Any]], val_bpb: float | None, status: str,
           kind: str = "proposal") -> TraceRecord:
    return {
        "iteration": iteration, "kind": kind,
        "changes": {name: {"old": old, "new": new} for name, (old, new) in changes.items()},
        "val_bpb": val_bpb, "status": status, "failure_class": "ok" if val_bpb is not None else "crashed",
        "hypothesis": f"try {sorted(changes)}", "proposal_source": "test", "training_seconds": 50.0,
    }


def fixated_trace() -> list[TraceRecord]:
    """A baseline then the same MATRIX_LR change proposed again and again."""
    trace = [record(0, {}, 2.66, "baseline", kind="baseline")]
    trace.append(record(1, {"MATRIX_LR": (0.04, 0.08)}, 2.60, "keep"))
    for i in range(2, 8):
        trace.append(record(i, {"MATRIX_LR": (0.08, 0.16 if i % 2 else 0.04)}, 2.62 + 0.01 * (i % 3), "discard"))
    return trace


def state_for(trace: list[TraceRecord], noise_sd: float | None = 0.01) -> State:
    baseline = trace[0]["val_bpb"] if trace else None
    kept = [r for r in trace if r["status"] in ("baseline", "keep") and r["val_bpb"] is not None]
    best = min(kept, key=lambda r: r["val_bpb"] or 0.0) if kept else None
    return {
        "iteration": len(trace), "search_space": SEARCH_SPACE,  # type: ignore[typeddict-item]
        "frozen": [], "guidance": "",
        "config": {"MATRIX_LR": 0.08, "DEPTH": 4, "WARMDOWN_RATIO": 0.5, "WEIGHT_DECAY": 0.2},
        "best": {"val_bpb": best["val_bpb"] if best else None, "iteration": best["iteration"] if best else None},
        "baseline": {"val_bpb": baseline, "noise_sd": noise_sd},
        "trace": list(trace),
    }


def source(code: str, name: str = "m", class_name: str = "Mechanism") -> MechanismSource:
    return {"name": name, "class_name": class_name, "code": code}
