"""How much of a model's context window a prompt may use, measured before it is sent.

No tokenizer of the serving model is available here (any OpenAI-compatible endpoint may answer),
so prompts are measured with a conservative estimate: 3 UTF-8 bytes per token. Real tokenizers of
small instruct models (Qwen2.5, Llama 3) average about 4 characters per token on English, JSON and
Python, and non-ASCII symbols such as arrows cost their full byte length here, so an estimate within
budget fits the real window with margin. Level 1, Level 1.5 and every Level 2 round are built to fit
DEFAULT_CONTEXT_TOKENS, the smallest window the project supports (an 8K local model).

This module imports nothing from the project, so both `runs` and `mechanisms` can use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_CONTEXT_TOKENS = 8192
BYTES_PER_TOKEN = 3
# Chat-template wrapping (role markers, special tokens) per message, and a margin for the system text.
TEMPLATE_OVERHEAD_TOKENS = 64


def estimate_tokens(text: str) -> int:
    """An upper estimate of how many tokens `text` takes in a small model's tokenizer."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def prompt_tokens(system: str, prompt: str) -> int:
    """Estimated tokens of a two-message chat request, template overhead included."""
    return estimate_tokens(system) + estimate_tokens(prompt) + 2 * TEMPLATE_OVERHEAD_TOKENS


def fit_rows(header: Sequence[str], rows: Sequence[str], budget_tokens: int, keep_first: int = 1) -> list[str]:
    """The header, the first `keep_first` rows and as many of the latest rows as fit in the budget.

    Rows left out are replaced by one line that says how many, so the model knows the history is cut
    (the latest rows matter most to the next decision; the first is the baseline everything is compared with).
    """
    used = sum(estimate_tokens(line) + 1 for line in header)
    head = list(rows[:keep_first])
    used += sum(estimate_tokens(line) + 1 for line in head)
    tail: list[str] = []
    marker_cost = 20
    for line in reversed(rows[keep_first:]):
        cost = estimate_tokens(line) + 1
        if used + cost + marker_cost > budget_tokens:
            break
        tail.append(line)
        used += cost
    tail.reverse()
    omitted = len(rows) - len(head) - len(tail)
    middle = [f"... ({omitted} earlier rows left out to fit the context window) ..."] if omitted else []
    return [*header, *head, *middle, *tail]
