"""Noise-aware acceptance (built-in catalogue mechanism).

From statistics (significance margins): one training run measures val_bpb with run-to-run
noise, so a strict "lower is better" rule keeps changes whose gain is only noise, and the
incumbent drifts on luck. accept() overrides a "keep" whose gain over the incumbent is smaller
than K standard deviations of the noise. The noise sd is the run's baseline noise estimate, or,
when absent, the sample sd of the baseline and its repeats in the trace.
"""

import statistics
from typing import Any

K = 1.0


def noise_sd(result: dict[str, Any], state: dict[str, Any]) -> float | None:
    for candidate in (result.get("noise_sd"), state.get("baseline", {}).get("noise_sd")):
        if isinstance(candidate, (int, float)) and candidate > 0:
            return float(candidate)
    repeats = [r["val_bpb"] for r in state.get("trace", [])
               if r.get("kind") in ("baseline", "baseline_repeat") and r.get("val_bpb") is not None]
    return statistics.stdev(repeats) if len(repeats) >= 2 else None


class NoiseAwareAcceptance:
    def accept(self, result: dict[str, Any], state: dict[str, Any]) -> dict[str, Any] | None:
        value, best = result.get("val_bpb"), result.get("best_val_bpb")
        if result.get("status") != "keep" or value is None or best is None:
            return None
        sigma = noise_sd(result, state)
        if sigma is None:
            return None
        gain = best - value
        if gain >= K * sigma:
            return None
        return {"keep": False,
                "reason": f"gain {gain:.4f} is below {K:g} sigma of the measurement noise (sigma {sigma:.4f}); "
                          "treated as noise, the incumbent stays"}

    def prompt_sections(self, state: dict[str, Any]) -> str | None:
        sigma = noise_sd({}, state)
        if sigma is None:
            return None
        return (f"Noise-aware acceptance: val_bpb varies by about {sigma:.4f} between identical runs; a change is "
                f"kept only if it beats the incumbent by at least {K * sigma:.4f}. Prefer bold, informative changes.")
