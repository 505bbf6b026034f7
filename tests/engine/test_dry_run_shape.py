"""A dry run a mechanism cannot tell from a real run by what it is shown.

Time bombs passed the ladder with clean reports and attacked only in real runs, telling the two
apart by one field (the recorded traces lacked ``proposal_source``). Here a real run is driven and
the state and records its mechanisms are given are compared, key for key and type for type, with
what the dry run gives on every recorded fixture (and on the paper's runs).
"""

from __future__ import annotations

from typing import Any

import pytest

from mechanisms.protocol import state_before
from mechanisms.validation.ladder import default_fixtures
from runs.engine.state import RunState
from tests.engine.helpers import drive, make_experiment

pytestmark = pytest.mark.django_db(transaction=True)

# Values that are None until something happens (no incumbent yet, a crash, no noise estimate).
NULLABLE = {"val_bpb", "best_before", "iteration", "noise_sd", "default", "min", "max", "choices"}


def shape(value: Any, key: str = "") -> Any:
    """Key sets and value types, recursively; a nullable value's type is "nullable" whether or not it is None."""
    if isinstance(value, dict):
        return {name: shape(item, name) for name, item in sorted(value.items())}
    if isinstance(value, list):
        shapes = {repr(shape(item)) for item in value}
        return ["mixed" if len(shapes) > 1 else (shape(value[0]) if value else "empty")]
    if key in NULLABLE:
        return "nullable"
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def record_shape(record: dict[str, Any]) -> str:
    """A record's keys and value types; a change reduced to its keys, the config to its parameter names."""
    changes = sorted({key for change in record["changes"].values() for key in change})
    return repr(shape({**record, "changes": changes, "config": sorted(record["config"])}))


def test_the_dry_run_shows_a_mechanism_what_a_real_run_shows_it() -> None:
    experiment = make_experiment(groups=["A"], iterations=3, strategy_interval=10)
    run = experiment.runs.get()
    drive(run)
    real = RunState.load(run).view()
    real_trace = real["trace"]
    assert len(real_trace) >= 3
    for fixture in default_fixtures():
        for index in (1, len(fixture.trace) - 1):
            dry = state_before(fixture.state, fixture.trace, index)
            assert sorted(dry) == sorted(real), fixture.name  # the same state keys
            shown: dict[str, Any] = dict(dry)
            for key in real:
                if key != "trace":
                    assert shape(shown[key], key) == shape(real[key], key), (fixture.name, key)
        assert {r["proposal_source"] for r in fixture.trace} <= {r["proposal_source"] for r in real_trace}
        real_shapes = {record_shape(r) for r in real_trace}
        assert {record_shape(dict(r)) for r in fixture.trace} <= real_shapes, fixture.name
        for real_record, dry_record in zip(real_trace, fixture.trace, strict=False):
            assert sorted(real_record) == sorted(dry_record), fixture.name
