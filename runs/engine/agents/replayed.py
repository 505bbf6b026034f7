"""The LLM agent of a replay: answered from the source run's recorded replies while its prompts match.

A prompt carries the whole state the agent sees (trace, frozen set, guidance, mechanisms' sections),
so the same prompt means the same situation, and the recorded reply is what the model answered to
it. The first prompt that is not among the recorded ones is where the replay diverged: the replay
records that iteration, and from there asks the endpoint like the run did (new replies, which a
second replay would not reproduce exactly; the run page says so).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Max

from ...models import Iteration, LLMCall, Run
from .llm import LLMAgent

REPLAYED_LEVELS = ("1", "1.5")


def recorded_replies(replay: Run) -> dict[tuple[str, str, str], LLMCall]:
    """The source's answered Level 1 and 1.5 calls made from the replay's first iteration on, by prompt."""
    assert replay.replay_of_id is not None and replay.replay_from_iteration is not None
    before = (Iteration.objects.filter(run_id=replay.replay_of_id, index__lt=replay.replay_from_iteration)
              .order_by("-index").values_list("created_at", flat=True).first())
    calls = LLMCall.objects.filter(run_id=replay.replay_of_id, level__in=REPLAYED_LEVELS, error="").exclude(reply="")
    if before is not None:
        calls = calls.filter(created_at__gt=before)
    tape: dict[tuple[str, str, str], LLMCall] = {}
    for call in calls.order_by("created_at", "pk"):
        tape.setdefault((call.level, call.purpose, call.prompt), call)  # the first answer to a prompt
    return tape


class ReplayedLLMAgent(LLMAgent):
    def __init__(self, *, replay: Run, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = replay
        self.tape = recorded_replies(replay)

    def complete(self, *, level: str, purpose: str, system: str, prompt: str, **kwargs: Any) -> str:
        if self.replay.replay_llm_diverged_at is None:
            recorded = self.tape.get((level, purpose, prompt))
            if recorded is not None:
                self.last_cut_off = False
                # Not sent (timeout 0): the recorded reply, with the tokens it cost the source.
                self.recorder(level=level, purpose=purpose, prompt=prompt, reply=recorded.reply, model=recorded.model,
                              tokens_in=recorded.tokens_in, tokens_out=recorded.tokens_out, latency_seconds=0.0,
                              error="", timeout_seconds=0.0)
                return recorded.reply
            self._mark_diverged()
        return super().complete(level=level, purpose=purpose, system=system, prompt=prompt, **kwargs)

    def _mark_diverged(self) -> None:
        last = self.replay.iteration_set.aggregate(last=Max("index"))["last"]
        index = 0 if last is None else last + 1
        Run.all_objects.filter(pk=self.replay.pk, replay_llm_diverged_at__isnull=True).update(
            replay_llm_diverged_at=index)
        self.replay.replay_llm_diverged_at = index
