"""Keep or discard a trained proposal.

- strict (the paper): keep iff val_bpb < best. One noisy measurement decides.
- noise_aware: keep iff the gain exceeds k × the run's noise sd (estimated from r baseline
  trainings with different seeds). A candidate is re-evaluated once with another seed, and kept
  only if the mean of both measurements still beats the best by k × sd / √2 (the sd of a mean of two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models import AcceptancePolicy

# The re-evaluation trains the candidate again on the run's seed plus this (a paired replay looks it up).
REEVALUATION_SEED_OFFSET = 7919


@dataclass
class Verdict:
    keep: bool
    needs_reevaluation: bool
    reason: str


def first_verdict(policy: str, value: float, best: float, noise_sd: float | None, k: float) -> Verdict:
    gain = best - value
    if policy == AcceptancePolicy.STRICT or not noise_sd:
        keep = value < best
        note = "" if policy == AcceptancePolicy.STRICT else " (noise sd unknown: strict rule)"
        return Verdict(keep, False, f"{value:.4f} {'<' if keep else '≥'} best {best:.4f}{note}")
    threshold = k * noise_sd
    if gain > threshold:
        return Verdict(True, True, f"gain {gain:.4f} > {k:g}σ = {threshold:.4f}: re-evaluating")
    return Verdict(False, False, f"gain {gain:.4f} ≤ {k:g}σ = {threshold:.4f}")


def final_verdict(values: list[float], best: float, noise_sd: float, k: float) -> Verdict:
    mean = sum(values) / len(values)
    threshold = k * noise_sd / math.sqrt(len(values))
    gain = best - mean
    keep = gain > threshold
    relation = ">" if keep else "≤"
    return Verdict(
        keep,
        False,
        f"re-evaluated: mean of {len(values)} = {mean:.4f}; gain {gain:.4f} {relation} "
        f"{k:g}σ/√{len(values)} = {threshold:.4f}",
    )


def sample_sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
