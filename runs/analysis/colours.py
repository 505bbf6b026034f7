"""Each ablation group's colour, the same on every chart: the comparison page, the reports and the
slice plots (static/bilevel/parcoords.js holds the same table for the browser's parallel coordinates)."""

from __future__ import annotations

GROUP_COLOURS = {"R": "#7a8594", "A": "#2f6fd6", "B": "#e07b00", "C": "#1f9d55", "D": "#8a4fd0"}


def colour(group: str) -> str:
    return GROUP_COLOURS.get(group, "#444")

