"""Groups whose results are identical: one line would hide the other on a chart while the legend
lists both, and their pair's "difference 0, p = 1" would go unexplained. Marked here so that
the charts draw such a group distinguishably and the notes say why."""

from __future__ import annotations

import math
from typing import Any

TOLERANCE = 1e-12


def _same(a: list[float | None], b: list[float | None]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif not math.isclose(x, y, abs_tol=TOLERANCE):
            return False
    return True


def _curve(group: dict[str, Any]) -> list[float | None]:
    return [point["mean"] for point in group["series"]["absolute"]]


def mark_identical_groups(data: dict[str, Any]) -> None:
    """Sets group["same_as"] (the key of the first earlier group with the same running-best
    curve, else None), adds a note per such group and explains the pairs with nothing to test."""
    for position, group in enumerate(data["groups"]):
        curve = _curve(group)
        drawn = any(v is not None for v in curve)
        earlier = [g for g in data["groups"][:position] if drawn and _same(_curve(g), curve)]
        group["same_as"] = earlier[0]["key"] if earlier else None
        if earlier:
            data["notes"].append(f"{group['key']} has exactly the same running-best curve as {earlier[0]['key']}: "
                                 "its line is drawn dotted, with markers, on top of the other.")
    for pair in data["pairs"]:
        first = next(g for g in data["groups"] if g["key"] == pair["first"])
        second = next(g for g in data["groups"] if g["key"] == pair["second"])
        # Identical curves share the first such group as their root (C and D both "same as A").
        if pair["difference"] == 0 and (first["same_as"] or first["key"]) == (second["same_as"] or second["key"]):
            pair["note"] = ("identical results in both groups (same seeds, same decisions): there is no "
                            "difference to test, hence p = 1")
