"""Paired replay and counterfactual credit, on the surrogate with planted mechanisms (run in the sandbox).

Each run is driven step by step in this process (what a worker does); the mechanism becomes active at
iteration ACTIVE_FROM, as one approved by a reviewer after a Level 2 session would. Credit is the
replay-without-it's final best minus the run's: positive when the mechanism helped.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from mechanisms.models import AttachmentStatus, Mechanism, MechanismAttachment
from runs.analysis.confirmed import confirmed_deltas
from runs.analysis.credit import outcomes_for, run_credits
from runs.engine.agents.random_control import random_value
from runs.engine.replay import create_replay, offer_replays
from runs.engine.step import execute_step
from runs.mechanism_spans import mechanism_spans
from runs.models import IterationKind, IterationStatus, Run, RunKind
from tests.engine.helpers import drive, make_experiment
from trainer.schema import apply_changes, default_config, schema_json
from trainer.surrogate import surrogate_evaluate

pytestmark = pytest.mark.django_db(transaction=True)

ITERATIONS = 8
ACTIVE_FROM = 4  # iterations 1-3 without the mechanism, then with it
BUDGET = 1.5e12

INERT = '''class Inert:
    def on_result(self, record, state):
        self.seen = record["iteration"]

    def accept(self, result, state):
        return None

    def filter(self, proposal, state):
        return None
'''

PLANTED = '''class Planted:
    def propose(self, state):
        if state["iteration"] == AT:
            return {"changes": CHANGES, "hypothesis": "planted: a change the objective rewards"}
        return None
'''

BLOCKER = '''class Blocker:
    def accept(self, result, state):
        if result["status"] == "keep":
            return {"keep": False, "reason": "blocks every improvement"}
        return None
'''


def add_mechanism(run: Run, name: str, code: str, class_name: str) -> MechanismAttachment:
    """An approved mechanism: the engine activates it at the run's next step, as after a review."""
    mechanism, _ = Mechanism.objects.get_or_create(
        code_hash=hashlib.sha256(code.encode()).hexdigest(),
        defaults={"name": name, "code": code, "origin": "llm", "passed_ladder": True,
                  "spec": {"name": name, "class_name": class_name}})
    return MechanismAttachment.objects.create(run=run, mechanism=mechanism, status=AttachmentStatus.APPROVED)


def run_with(mechanisms: list[tuple[str, str, str]], seed_base: int = 3, confirmation_repeats: int = 0) -> Run:
    experiment = make_experiment(groups=["D"], iterations=ITERATIONS, strategy_interval=100, review_gate=False,
                                 seed_base=seed_base, budget_value=BUDGET, confirmation_repeats=confirmation_repeats)
    run = experiment.runs.get()
    for _ in range(50):  # step until the mechanism's iteration is next
        run.refresh_from_db()
        if run.iteration_set.filter(kind=IterationKind.PROPOSAL).count() == ACTIVE_FROM - 1:
            break
        execute_step(run.pk, run.step_ticket, "test")
    for name, code, class_name in mechanisms:
        add_mechanism(run, name, code, class_name)
    drive(run)
    run.refresh_from_db()
    assert run.status == "completed", run.status_detail
    return run


def drive_replay(source: Run, removed: list[int]) -> Run:
    replay = create_replay(source, removed)
    drive(replay)
    replay.refresh_from_db()
    assert replay.status == "completed", replay.status_detail
    return replay


def best_random_change(seed: int) -> dict[str, Any]:
    """Changes to the default config that the surrogate rewards more than any short search finds."""
    rng = random.Random(7)
    knobs = [k for k in schema_json("cpu-tiny") if not k["locked"]]
    base = default_config("cpu-tiny")
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(300):
        changes = {k["name"]: random_value(k, rng) for k in rng.sample(knobs, 3)}
        try:
            config, _ = apply_changes(base, changes, frozen=[], preset="cpu-tiny")
        except Exception:
            continue
        summary = surrogate_evaluate(config, budget_kind="flops", budget_value=BUDGET, seed=seed)
        if summary.ok and summary.val_bpb is not None and (best is None or summary.val_bpb < best[0]):
            best = (summary.val_bpb, changes)
    assert best is not None
    return best[1]


def trajectory(run: Run) -> list[tuple[int, str, str, float | None]]:
    return [(it.index, it.status, str(sorted(it.config.items())), it.val_bpb)
            for it in run.iteration_set.order_by("index")]


def test_an_inert_mechanism_gets_credit_exactly_zero() -> None:
    source = run_with([("inert", INERT, "Inert")])
    [span] = mechanism_spans(source)
    assert span.first == ACTIVE_FROM + 0 and span.until is None  # baseline is iteration 0
    replay = drive_replay(source, [span.attachment])

    assert replay.kind == RunKind.REPLAY and replay.replay_of_id == source.pk
    assert replay.replay_from_iteration == ACTIVE_FROM
    assert trajectory(replay) == trajectory(source)
    credits = run_credits(source)
    [item] = credits.mechanisms
    assert item.outcome is not None and item.outcome.credit == 0.0 and item.outcome.diverged_at is None
    # The hooks ran in the source (it was active) but changed nothing.
    assert source.iteration_set.filter(index__gte=ACTIVE_FROM).exclude(hook_calls={}).exists()


def test_a_mechanism_that_forces_a_rewarded_change_gets_positive_credit() -> None:
    changes = best_random_change(seed=3)
    code = PLANTED.replace("AT", str(ACTIVE_FROM)).replace("CHANGES", repr(changes))
    source = run_with([("planted", code, "Planted")], confirmation_repeats=2)
    planted = source.iteration_set.get(index=ACTIVE_FROM)
    assert planted.proposal_source.startswith("mechanism:planted") and planted.status == IterationStatus.KEEP
    [span] = mechanism_spans(source)
    replay = drive_replay(source, [span.attachment])

    [item] = run_credits(source).mechanisms
    assert item.outcome is not None and item.outcome.credit is not None
    assert item.outcome.credit > 0
    assert replay.best_val_bpb is not None and source.best_val_bpb is not None
    assert item.outcome.credit == pytest.approx(replay.best_val_bpb - source.best_val_bpb)
    assert item.outcome.diverged_at == ACTIVE_FROM
    # Confirmed credit: both best configs re-trained on the same fresh seeds (the baseline's are the run's own,
    # reused: same config, same seed), the difference of the two confirmed Δ.
    theirs, ours = confirmed_deltas([source, replay]).values()
    assert theirs is not None and ours is not None
    assert item.outcome.confirmed_credit == pytest.approx(ours.delta - theirs.delta)
    assert item.outcome.confirmed_credit is not None and item.outcome.confirmed_credit > 0
    assert [c.val_bpb for c in replay.confirmations.filter(role="baseline").order_by("replicate")] == \
        [c.val_bpb for c in source.confirmations.filter(role="baseline").order_by("replicate")]


def test_a_mechanism_that_blocks_good_changes_gets_negative_credit() -> None:
    source = run_with([("blocker", BLOCKER, "Blocker")])
    after = source.iteration_set.filter(index__gte=ACTIVE_FROM)
    assert not after.filter(status=IterationStatus.KEEP).exists()
    overridden = [it for it in after if "overridden by blocker" in it.decision_reason]
    assert overridden, "the planted blocker must have turned at least one keep into a discard"
    [span] = mechanism_spans(source)
    drive_replay(source, [span.attachment])

    [item] = run_credits(source).mechanisms
    assert item.outcome is not None and item.outcome.credit is not None and item.outcome.credit < 0
    assert item.outcome.diverged_at == overridden[0].index


def test_the_same_replay_twice_gives_identical_values_and_two_mechanisms_show_without_both() -> None:
    changes = best_random_change(seed=3)
    planted = PLANTED.replace("AT", str(ACTIVE_FROM)).replace("CHANGES", repr(changes))
    source = run_with([("planted", planted, "Planted"), ("blocker", BLOCKER, "Blocker")])
    spans = mechanism_spans(source)
    assert [s.name for s in spans] == ["planted", "blocker"]

    created = offer_replays(source.pk)  # without each, and without both
    assert len(created) == 3
    assert offer_replays(source.pk) == []  # made once
    for replay_id in created:
        drive(Run.all_objects.get(pk=replay_id))
    again = drive_replay(source, [spans[0].attachment])
    first = Run.all_objects.get(pk=created[0])
    assert trajectory(again) == trajectory(first) and again.best_val_bpb == first.best_val_bpb

    credits = run_credits(source)
    assert credits.complete and credits.without_all is not None
    assert sorted(credits.without_all.names) == ["blocker", "planted"]
    assert credits.interaction is not None
    credit_sum = sum(m.outcome.credit for m in credits.mechanisms if m.outcome and m.outcome.credit is not None)
    assert credits.without_all.credit is not None
    assert credits.interaction == pytest.approx(credits.without_all.credit - credit_sum)
    bars = credits.waterfall()
    assert [b["label"] for b in bars][:2] == ["baseline", "Level 1 alone"]
    assert bars[-1]["end"] == source.best_val_bpb and bars[1]["end"] == credits.without_all.final_best
    # Replays of a run are found only on purpose: the default manager never lists them.
    assert not Run.objects.filter(pk__in=created).exists()
    assert len(outcomes_for([source])[source.pk]) == 4


LATE_SECTION = '''class LateHint:
    def prompt_sections(self, state):
        if state["iteration"] >= FROM:
            return ["Hint from a mechanism: prefer small weight decay."]
        return []
'''


def test_an_llm_run_is_replayed_from_its_recorded_replies_until_its_prompts_diverge() -> None:
    from django.test import override_settings

    from runs.engine.agents.factory import forget_endpoints
    from runs.models import LLMCall
    from tests.engine.test_llm_agent import reply
    from tests.openai_stub import scripted_openai

    forget_endpoints()
    stubs = scripted_openai()
    stub = next(stubs)
    try:
        with override_settings(LLM_RETRY_BACKOFF_SECONDS=0.01, LLM_TIMEOUT_SECONDS=5.0):
            experiment = make_experiment(groups=["D"], iterations=ITERATIONS, strategy_interval=100,
                                         review_gate=False, agent_backend="llm", llm_base_url=stub.base_url,
                                         llm_model="test-model", llm_api_key="sk-test", budget_value=BUDGET)
            source = experiment.runs.get()
            stub.script = [reply({"WEIGHT_DECAY": round(0.01 * i, 3)}) for i in range(1, ITERATIONS + 1)]
            for _ in range(50):
                source.refresh_from_db()
                if source.iteration_set.filter(kind=IterationKind.PROPOSAL).count() == ACTIVE_FROM - 1:
                    break
                execute_step(source.pk, source.step_ticket, "test")
            late = ACTIVE_FROM + 2  # the mechanism is active from ACTIVE_FROM; its section appears here
            add_mechanism(source, "late_hint", LATE_SECTION.replace("FROM", str(late)), "LateHint")
            drive(source)
            source.refresh_from_db()
            assert source.status == "completed" and len(stub.requests) == ITERATIONS and not stub.script
            assert "Hint from a mechanism" in LLMCall.objects.filter(run=source).order_by("created_at")[late - 1].prompt

            [span] = mechanism_spans(source)
            stub.script = [reply({"WEIGHT_DECAY": round(0.2 + 0.01 * i, 3)}) for i in range(ITERATIONS)]
            replay = drive_replay(source, [span.attachment])
    finally:
        next(stubs, None)
        forget_endpoints()

    assert replay.replay_llm_diverged_at == late
    # Iterations ACTIVE_FROM and ACTIVE_FROM + 1 were answered from the recording (not sent: timeout 0);
    # from `late` on the endpoint was asked again: one new request per remaining iteration.
    calls = list(LLMCall.objects.filter(run=replay).order_by("created_at"))
    assert [c.timeout_seconds == 0.0 for c in calls] == [True, True] + [False] * (ITERATIONS - late + 1)
    assert len(stub.requests) == ITERATIONS + (ITERATIONS - late + 1)
    for index in (ACTIVE_FROM, ACTIVE_FROM + 1):
        assert replay.iteration_set.get(index=index).config == source.iteration_set.get(index=index).config
    [item] = run_credits(source).mechanisms
    assert item.outcome is not None and item.outcome.llm_diverged_at == late
