"""The resumable batch source of the RL stages: prompts → rollout → experience → micro-batches.

When its buffer is empty the source takes the next prompts, runs the stage's rollout phase
(``RLStage.rollout_phase``: generation, scoring, reference / value forwards and advantages, all once per
rollout) to build an ``Experience``, and then hands out its micro-batches for ``epochs`` shuffled passes.
The loop takes ``batch_size / micro_batch_size`` of them per optimizer step, so a rollout always ends on a
step boundary.

State: the prompt cursor, the number of rollouts made and the cursor into the current rollout's schedule
(JSON, in the checkpoint's meta) plus the experience tensors when a checkpoint falls inside a rollout
(``experience_state``, saved with the stage state). The sampling seed of rollout ``k`` is derived from
``(seed, k, rank)``, so a resumed run generates the same next rollout as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

from alignloop.stages.rl.experience import Experience, minibatch_schedule
from alignloop.train.batches import EpochBatchSource

__all__ = ["RolloutBatchSource", "rollout_seed"]


def rollout_seed(seed: int, rollout_index: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + rollout_index * 7_919 + rank * 104_729) % (2**62)


class RolloutBatchSource:
    def __init__(
        self,
        prompts: EpochBatchSource,
        rollout_phase: Callable[[list[dict], int], Experience],
        *,
        minibatch_size: int,
        micro_batch_size: int,
        epochs: int,
        seed: int,
        group_size: int = 1,
    ):
        self.prompts = prompts
        self.rollout_phase = rollout_phase
        self.minibatch_size = minibatch_size
        self.micro_batch_size = micro_batch_size
        self.epochs = epochs
        self.seed = seed
        self.group_size = group_size  # > 1: micro-batches keep a prompt's responses together (minibatch_schedule)
        self.rollouts_done = 0
        self.experience: Experience | None = None
        self.schedule: list[list[int]] = []
        self.cursor = 0

    @property
    def exhausted(self) -> bool:
        """True at a rollout boundary: the next micro-batch needs a new rollout."""
        return self.experience is None or self.cursor >= len(self.schedule)

    @property
    def steps_left_in_rollout(self) -> int:
        per_step = self.minibatch_size // self.micro_batch_size
        return 0 if self.exhausted else (len(self.schedule) - self.cursor) // per_step

    def next_batch(self) -> dict[str, Any]:
        if self.exhausted:
            self._new_rollout()
        rows = self.schedule[self.cursor]
        self.cursor += 1
        assert self.experience is not None
        return self.experience.micro_batch(rows)

    def _new_rollout(self) -> None:
        records = self.prompts.next_batch()
        self.experience = self.rollout_phase(records, self.rollouts_done)
        self._make_schedule()
        self.rollouts_done += 1
        self.cursor = 0

    def _make_schedule(self) -> None:
        assert self.experience is not None
        self.schedule = minibatch_schedule(
            len(self.experience), self.minibatch_size, self.micro_batch_size, self.epochs, self.seed,
            self.rollouts_done, self.group_size,
        )

    def skip_rest_of_rollout(self) -> None:
        """Approx-KL early stop: the remaining updates on this rollout are dropped."""
        self.cursor = len(self.schedule)
        self.experience = None

    @property
    def epoch(self) -> float:
        return self.prompts.epoch

    def state_dict(self) -> dict:
        return {
            "prompts": self.prompts.state_dict(),
            "rollouts_done": self.rollouts_done,
            "cursor": self.cursor,
            "mid_rollout": not self.exhausted,
        }

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.rollouts_done = int(state["rollouts_done"])
        self.cursor = int(state["cursor"])
        self.experience = None
        self.schedule = []
        self._pending_mid_rollout = bool(state["mid_rollout"])

    def experience_state(self) -> dict | None:
        """The current rollout's tensors when a checkpoint falls inside it (else None)."""
        return None if self.exhausted else self.experience.state_dict()  # type: ignore[union-attr]

    def load_experience_state(self, state: dict | None) -> None:
        pending = getattr(self, "_pending_mid_rollout", False)
        if state is None:
            if pending:
                raise ValueError("the checkpoint was taken inside a rollout but holds no experience tensors")
            return
        self.experience = Experience.from_state_dict(state)
        # the schedule of the rollout being replayed was built when rollouts_done was one less
        self.rollouts_done -= 1
        self._make_schedule()
        self.rollouts_done += 1
        self._pending_mid_rollout = False
