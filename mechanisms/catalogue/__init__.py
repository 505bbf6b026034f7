"""Built-in mechanisms written by the project, handed out as source TEXT.

Each sibling module is mechanism code that runs only inside the sandboxed host, exactly like
generated code, and passes the same validation ladder. They are never imported in the
orchestrator: the empty ``__path__`` below makes ``import mechanisms.catalogue.tabu`` fail, while
ruff and mypy still check the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__path__.clear()  # no importable submodules: the modules are data for the sandbox

_DIRECTORY = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    class_name: str
    code: str
    spec: dict[str, Any]
    # Trace symptoms this mechanism answers (see research.session.diagnose).
    diagnosis: tuple[str, ...] = field(default=())


_SPECS: list[dict[str, Any]] = [
    {
        "name": "tabu",
        "class_name": "TabuSearch",
        "hooks": ["on_result", "filter", "prompt_sections"],
        "rationale": "Tabu search (metaheuristics): a short-term memory of recent moves forbids repeating them, "
                     "which breaks cycles of re-proposed values.",
        "state_kept": "For every (parameter, value) move seen in the trace: the last iteration it was tried and "
                      "its status.",
        "expected_effect": "Rejects proposals that repeat a move from the last 8 iterations or revisit a value "
                           "discarded or crashed in the last 16; lists the tabu moves in the prompt.",
        "diagnosis": ("repetition", "crashes"),
    },
    {
        "name": "parameter_bandit",
        "class_name": "ParameterBandit",
        "hooks": ["on_result", "restrict", "prompt_sections"],
        "rationale": "Multi-armed bandit (online learning, UCB1): treat each tunable parameter as an arm rewarded "
                     "by kept changes, balancing exploitation of productive knobs with exploration of untried ones.",
        "state_kept": "Per parameter: how often a proposal changed it and how often that change was kept.",
        "expected_effect": "Restricts each iteration to the 3 parameters with the highest upper confidence bound "
                           "and explains the choice in the prompt.",
        "diagnosis": ("fixation", "stagnation"),
    },
    {
        "name": "coordinate_exploration",
        "class_name": "CoordinateExploration",
        "hooks": ["on_result", "propose"],
        "rationale": "Coordinate search (derivative-free optimisation): when the search keeps probing one "
                     "direction, step along an orthogonal, least-tested coordinate instead.",
        "state_kept": "The parameters changed by the last 5 proposals and a per-parameter count of tries.",
        "expected_effect": "When the last 5 proposals all changed the same single parameter, replaces the "
                           "proposal with one bounded step on the least-tested other parameter.",
        "diagnosis": ("fixation",),
    },
    {
        "name": "noise_aware_acceptance",
        "class_name": "NoiseAwareAcceptance",
        "hooks": ["accept", "prompt_sections"],
        "rationale": "Significance margins (statistics): a single noisy measurement should only replace the "
                     "incumbent when the gain exceeds the measurement noise.",
        "state_kept": "Nothing: the noise sd comes from the result, the baseline, or the baseline repeats in "
                      "the trace.",
        "expected_effect": "Turns a 'keep' into a 'discard' when the gain over the incumbent is below 1 sigma of "
                           "the noise; states the margin in the prompt.",
        "diagnosis": ("noise", "stagnation"),
    },
]


def catalogue_entries() -> list[CatalogueEntry]:
    """Every built-in mechanism with its source text and spec (the spec JSON the ladder checks)."""
    entries = []
    for spec in _SPECS:
        public_spec = {key: value for key, value in spec.items() if key != "diagnosis"}
        code = (_DIRECTORY / f"{spec['name']}.py").read_text()
        entries.append(CatalogueEntry(spec["name"], spec["class_name"], code, public_spec, spec["diagnosis"]))
    return entries
