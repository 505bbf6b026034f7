"""Prompts of the four-round Level 2 research session (explore, critique, specify, generate).

Each prompt states the exact reply format, because every reply is parsed and checked; a reply
that fails gets one of the bounded repair prompts below with the error text.
"""

from __future__ import annotations

import json
from typing import Any

from mechanisms.protocol import ALLOWED_IMPORTS, HOOK_NAMES, TraceRecord

ROUNDS = ("explore", "critique", "specify", "generate")

SPEC_FORMAT = (
    '{"name": "snake_case_identifier", "class_name": "PascalCaseIdentifier",\n'
    f' "hooks": [subset of {json.dumps(list(HOOK_NAMES))}, exactly the methods the class defines],\n'
    ' "rationale": "why this mechanism fits the observed failure mode",\n'
    ' "state_kept": "what the mechanism remembers (rebuilt from on_result on replay)",\n'
    ' "expected_effect": "which decisions it will change, and when"}'
)


def format_trace(trace: list[TraceRecord]) -> str:
    """One compact JSON object per line: the structured trace the model reasons over."""
    lines = []
    for record in trace:
        compact = {key: record.get(key) for key in ("iteration", "kind", "changes", "val_bpb", "status",
                                                    "failure_class", "proposal_source")}
        compact["hypothesis"] = str(record.get("hypothesis", ""))[:200]
        lines.append(json.dumps(compact, sort_keys=False))
    return "\n".join(lines) or "(no iterations yet)"


def explore_prompt(protocol: str, runner_source: str, trace: list[TraceRecord], level15_history: list[Any],
                   active_mechanisms: list[str]) -> str:
    return f"""You are the mechanism researcher of an automated hyperparameter search (Level 2).
The inner loop proposes one change to a GPT training config per iteration, trains, and keeps the
change if val_bpb (lower is better) improved. Your job: find how the SEARCH ITSELF is failing, and
invent search mechanisms that fix it, drawing on adjacent fields (optimisation, metaheuristics,
bandits, statistics, design of experiments, active learning, control).

{protocol}

## The runner that will call your mechanism (its own source)
```python
{runner_source or "(not provided)"}
```

## The run's full trace, oldest first
{format_trace(trace)}

## Strategy level (1.5) history: frozen parameters and guidance per outer cycle
{json.dumps(level15_history, indent=1) if level15_history else "(none)"}

## Mechanisms already active
{", ".join(active_mechanisms) or "(none)"}

Allowed imports: {", ".join(ALLOWED_IMPORTS)}.

Reply with ONE JSON object and nothing else:
{{"diagnosis": "the failure mode you see in the trace, with evidence (iterations, parameters)",
 "candidates": [{{"name": "snake_case", "field": "source field", "idea": "how it works",
                 "hooks": ["hooks it would use"]}}, ... 3 or 4 candidates ...]}}
"""


def critique_prompt(explore: dict[str, Any]) -> str:
    return f"""Critique the candidate mechanisms against the observed failure mode.

Diagnosis: {explore["diagnosis"]}
Candidates:
{json.dumps(explore["candidates"], indent=1)}

Score each from 0 to 10 for: fixes the observed failure mode; changes decisions often enough to
matter; cannot make the search worse (bounded, deterministic given the trace); fits the hooks.
Select exactly one.

Reply with ONE JSON object and nothing else:
{{"scores": [{{"name": "candidate name", "score": 0-10, "reason": "..."}}, ...],
 "selected": "the chosen candidate's name"}}
"""


def specify_prompt(explore: dict[str, Any], selected: dict[str, Any]) -> str:
    return f"""Write the specification of the selected mechanism.

Diagnosis: {explore["diagnosis"]}
Selected: {json.dumps(selected, indent=1)}

Reply with ONE JSON object and nothing else, in this format:
{SPEC_FORMAT}
"""


def generate_prompt(protocol: str, spec: dict[str, Any]) -> str:
    return f"""Write the mechanism's code.

{protocol}

Specification:
{json.dumps(spec, indent=1)}

Rules: one module; only the allowed imports; exactly one top-level class named
{spec.get("class_name")!r} with a no-argument constructor, defining exactly the hooks {spec.get("hooks")};
everything it remembers must be rebuilt from on_result records; return plain JSON values only.
It will be dry-run on recorded traces and must change at least one decision.

Reply with the Python source only, in one ```python fenced block.
"""


def repair_prompt(round_name: str, original_prompt: str, reply: str, error: str) -> str:
    return f"""Your previous reply to the {round_name} round could not be used.

Error:
{error}

Your previous reply:
{reply[:6000]}

Fix the problem and reply again in exactly the requested format. The original request follows.

{original_prompt}
"""
