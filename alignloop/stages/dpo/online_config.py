"""The ``dpo:`` keys of online DPO (``dpo.online: true``), a base of ``DPOOptions``: names as in the RL stages.

Offline DPO ignores every key here except ``online`` (and refuses a ``reward``, which only online mode uses).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignloop.config import SamplingSettings

__all__ = ["OnlineOptions"]


def _online_only(name: str, default: Any) -> Any:
    """SamplingSettings' field ``name`` with this default, described as online-only."""
    info = SamplingSettings.field(name, default)
    info.description = f"Online only: {info.description[0].lower()}{info.description[1:]}"
    return info


class OnlineOptions(SamplingSettings):
    max_new_tokens: int = _online_only("max_new_tokens", 48)
    temperature: float = _online_only("temperature", 1.0)
    top_p: float = _online_only("top_p", 1.0)
    top_k: int = _online_only("top_k", 0)
    stop: list[str] | None = _online_only("stop", None)
    online: bool = Field(
        False, description="Online DPO: each step samples two responses per prompt from the current policy, labels "
        "them with `reward` and takes a DPO step on the pair (data.train then holds prompt records).",
    )
    reward: Any = Field(
        None, description="Online only. Reward source that labels the two samples: a reward-model run dir, "
        "'module:function', 'rule:<name>', a list of {source, weight, args}, or {judge: {model, ...}} (an LLM judge, "
        "pairwise by default: it compares the two samples in both orders).",
    )
    generation_batch_size: int = Field(32, gt=0, description="Online only: sequences decoded together.")
    tie_margin: float = Field(
        0.0, ge=0, description="Online only: two samples whose scores differ by at most this are a tie; ties (and "
        "identical samples) are skipped and counted (objective/tie_fraction).",
    )
    truncation: Literal["keep", "penalty", "score"] = Field(
        "keep", description="Online only: a sample with no EOS (hit max_new_tokens) keeps its score, loses "
        "truncation_value (penalty), or scores truncation_value (score), before the two are compared.",
    )
    truncation_value: float = Field(1.0, description="Online only: penalty or replacement score for truncated samples.")
    gold: str | None = Field(
        None, description="Online only: gold scorer logged next to the reward ('vader' or module:function)."
    )
    eval_prompts: int = Field(
        32, ge=0, description="Online only: eval prompts decoded greedily and scored by evaluate() (0: none)."
    )
    eval_before: bool = Field(True, description="Online only: also evaluate before the first step (summary.json).")
    samples_every: int = Field(
        1, ge=0, description="Online only: write samples to samples.jsonl every N steps (0: never)."
    )
    samples_count: int = Field(4, gt=0, description="Online only: samples written each time (two per prompt).")

    @model_validator(mode="after")
    def _online_keys(self) -> "OnlineOptions":
        if self.online and self.reward is None:
            raise ValueError("online DPO (dpo.online: true) needs dpo.reward, the reward source that labels its "
                             "samples: a reward-model run dir, 'module:function', 'rule:<name>' or {judge: ...}")
        if not self.online and self.reward is not None:
            raise ValueError("dpo.reward is only used by online DPO: set dpo.online: true (offline DPO trains on the "
                             "pairs of data.train and takes no reward)")
        if self.online and self.temperature <= 0:
            raise ValueError("dpo.temperature must be > 0 with dpo.online: true (greedy decoding gives two identical "
                             "samples)")
        return self
