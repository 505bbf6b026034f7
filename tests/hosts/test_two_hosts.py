"""Two hosts share a site: a second host in a network namespace joins with the README's command.

Each case asserts on the database afterwards: every run completed with exactly its T proposals,
indices 0..T with no gap or duplicate, and every kept value is what the (deterministic) surrogate
gives that config on that seed, so no result was recorded for the wrong config or twice.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from runs.engine import control
from runs.models import Experiment, InterruptedAttempt, Iteration, IterationStatus, Run, RunStatus, WorkerHeartbeat
from tests.engine.helpers import make_experiment
from trainer.surrogate import surrogate_evaluate

from .conftest import HEARTBEAT_SECONDS, Site, record_measurement

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

STALE_SECONDS = 5 * HEARTBEAT_SECONDS


def start(site: Site, *, runs: int, iterations: int) -> Experiment:
    """An experiment of several surrogate runs, started once both hosts' train workers are up."""
    site.wait(lambda: WorkerHeartbeat.objects.filter(host=site.second.hostname).exists(), 120,
               "the second host's worker to join")
    experiment = make_experiment(name="two hosts", repeats=runs, iterations=iterations,
                                 strategy_interval=iterations, confirmation_repeats=0)
    control.start_experiment(experiment)
    return experiment


def finished(experiment: Experiment) -> bool:
    return not experiment.runs.exclude(status__in=(RunStatus.COMPLETED, RunStatus.FAILED)).exists()


def wait_finished(site: Site, experiment: Experiment, timeout: float = 240) -> None:
    site.wait(lambda: finished(experiment), timeout, "the experiment to finish", interval=0.2)


def assert_intact(experiment: Experiment) -> None:
    """Every run: completed, T proposals, indices 0..T once each, kept values true to their config."""
    T = experiment.iterations
    for run in experiment.runs.all():
        assert run.status == RunStatus.COMPLETED, (run.pk, run.status, run.status_detail)
        iterations = list(run.iteration_set.order_by("index"))
        assert [i.index for i in iterations] == list(range(T + 1)), f"run {run.pk}: gap or duplicate"
        assert run.proposals_done == T == sum(i.kind == "proposal" for i in iterations)
        kept = [i for i in iterations if i.status in (IterationStatus.KEEP, IterationStatus.BASELINE)]
        for iteration in kept:
            truth = surrogate_evaluate(iteration.config, budget_kind=experiment.budget_kind,
                                       budget_value=experiment.budget_value, seed=run.seed).val_bpb
            # The workers fit the surrogate in their own processes, where BLAS may sum in another order
            # (1e-10 apart in a full-suite run); a value of another config differs by far more.
            assert iteration.val_bpb == pytest.approx(truth, abs=1e-6), f"run {run.pk} #{iteration.index}"
        best = min(kept, key=lambda i: (i.val_bpb, i.index))
        assert (run.best_iteration, run.best_val_bpb) == (best.index, pytest.approx(best.val_bpb))


def hosts_that_trained(experiment: Experiment) -> set[str]:
    return set(Iteration.objects.filter(run__experiment=experiment).values_list("host", flat=True))


def test_two_hosts_share_an_experiment_and_no_step_runs_twice(make_site: Any) -> None:
    site = make_site(pace_seconds=0.5)
    experiment = start(site, runs=4, iterations=6)
    wait_finished(site, experiment)
    assert_intact(experiment)
    assert hosts_that_trained(experiment) == {site.first_hostname, site.second.hostname}
    assert not InterruptedAttempt.objects.filter(run__experiment=experiment).exists()
    for run in experiment.runs.all():
        assert run.steps_claimed == experiment.iterations + 1, f"run {run.pk}: a step was claimed twice"
    devices = set(Iteration.objects.filter(run__experiment=experiment).values_list("device", flat=True))
    assert all(device.startswith(("cpu: ", "cuda: ")) for device in devices), devices


def held_by(hostname: str) -> Run | None:
    """A run the host holds mid-evaluation (its live progress shows the training in flight)."""
    return (Run.objects.filter(lease_host=hostname, status=RunStatus.RUNNING)
            .exclude(live_progress={}).first())


def partition_once(site: Site) -> tuple[float, float, dict[str, Any]]:
    """Cut the second host off mid-training. Returns the seconds until the site took the step away
    from it (heartbeat rule) and until the first host held it, and the late result that was fenced."""
    cut_off = site.second
    run = site.wait(lambda: held_by(cut_off.hostname), 60, "the second host to be mid-training")
    cut_off.partition()
    cut_at = time.monotonic()
    owner, ticket = run.lease_owner, run.lease_ticket
    # The site frees the step by the heartbeat rule (the reaper on beat, every second) and re-queues it.
    attempt = site.wait(lambda: InterruptedAttempt.objects.filter(holder=owner).first(), 30,
                        f"the takeover of run {run.pk}")
    freed = time.monotonic() - cut_at
    assert "sent no heartbeat" in attempt.reason and attempt.ticket == ticket
    # Only the first host can take it while the second is cut off (once its own step is done).
    site.wait(lambda: Run.objects.filter(pk=run.pk, lease_host=site.first_hostname, lease_ticket__gt=ticket).exists()
              or Iteration.objects.filter(run=run, index=attempt.index, host=site.first_hostname).exists(),
              60, "the first host to take the step")
    taken = time.monotonic() - cut_at
    # Cut off, the second host finishes its evaluation and keeps trying to record it.
    trying = f"run {run.pk}: recording iteration {attempt.index}: the database did not answer"
    site.wait(lambda: trying in cut_off.worker_log(), 60, "the cut-off worker to try its commit")
    healed_after = Iteration.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    cut_off.heal()
    fenced = site.wait(lambda: InterruptedAttempt.objects.filter(pk=attempt.pk, fenced_at__isnull=False).first(),
                       60, "the late commit to be refused")
    assert fenced.fenced_result["index"] == fenced.index
    assert fenced.fenced_result["host"] == cut_off.hostname
    # The taken-over step was recorded once, by the first host.
    recorded = site.wait(lambda: Iteration.objects.filter(run=run, index=fenced.index).first(), 60,
                         "the taken-over step to be recorded")
    assert recorded.host == site.first_hostname
    # The cut-off worker goes on with new work.
    site.wait(lambda: Iteration.objects.filter(pk__gt=healed_after, host=cut_off.hostname).exists(), 90,
              "the healed host to record new work")
    return freed, taken, fenced.fenced_result


def test_a_partitioned_host_is_taken_over_and_its_late_result_is_fenced(make_site: Any) -> None:
    site = make_site(pace_seconds=2.5)
    experiment = start(site, runs=3, iterations=16)
    freed: list[float] = []
    taken: list[float] = []
    refused: list[dict[str, Any]] = []
    while len(freed) < 3 and not finished(experiment):
        seconds_to_free, seconds_to_take, result = partition_once(site)
        freed.append(seconds_to_free)
        taken.append(seconds_to_take)
        refused.append(result)
    wait_finished(site, experiment)
    assert_intact(experiment)
    assert len(freed) == 3, "the runs ended before three partitions"
    # The heartbeat rule: stale after five missed beats, noticed by the reaper within a second.
    assert max(freed) < STALE_SECONDS + 1 + 5, freed
    record_measurement("partition", freed_seconds=freed, freed_median=statistics.median(freed), freed_max=max(freed),
                       taken_by_first_host_seconds=taken, taken_median=statistics.median(taken), taken_max=max(taken),
                       refused=[{k: r[k] for k in ("what", "index", "val_bpb", "host")} for r in refused])


def terminate_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int(cursor.fetchone()[0])


def kill_connections_after(site: Site, experiment: Experiment, iterations: int) -> float:
    """Once `iterations` are recorded, kill every other connection to the test database; returns the
    seconds until the next iteration is recorded."""
    recorded = Iteration.objects.filter(run__experiment=experiment)
    site.wait(lambda: recorded.count() >= iterations, 120, f"{iterations} iterations")
    before = recorded.count()
    assert terminate_other_backends() > 0
    killed_at = time.monotonic()
    site.wait(lambda: recorded.count() > before, 60, "an iteration after the connections were killed")
    return time.monotonic() - killed_at


def test_workers_reconnect_after_every_database_connection_is_killed(make_site: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("terminates PostgreSQL backends: run with DATABASE_URL on PostgreSQL")
    site = make_site(pace_seconds=1.0)
    experiment = start(site, runs=3, iterations=10)
    recoveries = [kill_connections_after(site, experiment, threshold) for threshold in (4, 12, 20)]
    wait_finished(site, experiment)
    assert_intact(experiment)
    assert hosts_that_trained(experiment) == {site.first_hostname, site.second.hostname}
    record_measurement("postgresql-connections-killed", recovery_seconds=recoveries,
                       median=statistics.median(recoveries), max=max(recoveries))


def test_steps_lost_with_redis_data_are_queued_again_without_a_person(make_site: Any, redis_client: Any) -> None:
    from runs.tasks import steps_in_broker

    site = make_site(pace_seconds=1.0)
    experiment = start(site, runs=4, iterations=8)
    site.wait(lambda: Iteration.objects.filter(run__experiment=experiment).count() >= 6, 120,
               "the experiment to be under way")
    # Two hosts train one step each: the other runs' steps wait in the queue. Redis loses everything.
    in_queue = site.wait(lambda: {(run_id, ticket) for run_id, ticket in steps_in_broker() or ()
                                  if not Run.objects.filter(pk=run_id).exclude(lease_owner="").exists()},
                         30, "steps waiting in the broker")
    redis_client.flushdb()
    flushed_at = time.monotonic()
    claims = dict(Run.objects.filter(experiment=experiment).values_list("pk", "steps_claimed"))
    site_worker = next(s for s in site.services if s.name == "celery-site")

    def revived() -> set[int]:
        return {run_id for run_id, _ in in_queue if f"re-enqueued run {run_id} " in site_worker.output()}

    # No person runs reap_steps: the periodic reaper notices the steps missing from the broker.
    lost = site.wait(revived, 60, "the lost steps to be queued again")
    site.wait(lambda: all(Run.objects.get(pk=run_id).steps_claimed > claims[run_id] for run_id in lost), 60,
               "the re-queued steps to be claimed")
    requeued = time.monotonic() - flushed_at
    wait_finished(site, experiment)
    assert_intact(experiment)
    record_measurement("redis-flushed", steps_waiting=len(in_queue), steps_requeued=len(lost),
                       requeued_and_claimed_within_seconds=requeued,
                       grace_seconds=float(site.env["BILEVEL_LOST_TASK_GRACE_SECONDS"]))


def test_a_few_seconds_of_clock_skew_does_not_take_a_live_holders_step(make_site: Any) -> None:
    skew = -4.0  # the second host's wall clock runs 4 s behind: more than the 2.5 s stale rule
    site = make_site(pace_seconds=1.0, second_clock_offset=skew)
    experiment = start(site, runs=3, iterations=6)
    wait_finished(site, experiment)
    assert_intact(experiment)
    assert hosts_that_trained(experiment) == {site.first_hostname, site.second.hostname}
    assert not InterruptedAttempt.objects.filter(run__experiment=experiment).exists(), [
        (a.host, a.reason) for a in InterruptedAttempt.objects.all()]
    for run in experiment.runs.all():
        assert run.steps_claimed == experiment.iterations + 1
    assert settings.STEP_HEARTBEAT_SECONDS  # the suite's own settings are untouched by the site's
