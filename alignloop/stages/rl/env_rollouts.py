"""Multi-turn rollouts with an environment in the RL stages (``grpo.env``, ``grpo.max_turns``; docs/tools.md).

``with_environment`` wraps the stage's sampler in ``envs.MultiTurnSampler`` when the section names an
environment; everything after sampling (rewards on the final answer, advantages, losses, checkpoints) is
unchanged, except that the rollout's ``action_mask`` keeps the inserted tool-output tokens out of the loss and
the KL. The sampler's ``metrics()`` (``env/turns_mean``, ``env/tool_calls_mean``, ``env/tool_errors``,
``env/reward_mean``) are logged every step by ``RLStage.on_step_end``.
"""

from __future__ import annotations

from typing import Any

from alignloop.envs import ENVIRONMENTS, MultiTurnSampler
from alignloop.errors import ConfigError
from alignloop.stages.rl.roles import SyncsWeights

__all__ = ["with_environment"]


def with_environment(sampler: Any, opts: Any, tokenizer: Any, section: str, vision: Any = None) -> Any:
    """``sampler`` itself when ``<section>.env`` is unset, else a ``MultiTurnSampler`` around it."""
    name = getattr(opts, "env", None)
    if name is None:
        return sampler
    if name not in ENVIRONMENTS:
        raise ConfigError(f"{section}.env: unknown environment {name!r} (known: {', '.join(sorted(ENVIRONMENTS))})")
    if vision is not None:  # the VLM prompt tokenizer
        raise ConfigError(f"{section}.env: multi-turn environments take text models only")
    if isinstance(sampler, SyncsWeights):
        raise ConfigError(f"{section}.env: not with remote rollout workers (rollout.workers) yet")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{section}.env: the tokenizer has no chat template to render tool messages with")
    return MultiTurnSampler(sampler, tokenizer, ENVIRONMENTS[name], max_turns=opts.max_turns)
