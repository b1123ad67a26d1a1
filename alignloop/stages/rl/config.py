"""Options shared by the RL stages (PPO, GRPO/RLOO): rollout shape, sampling, clipping, KL, rewards, monitors.

How optimizer steps relate to rollouts (the same in PPO and GRPO):

* one **rollout** = ``prompts_per_rollout × num_generations`` sampled responses, scored once;
* it is cut into mini-batches of ``train.batch_size`` responses (``micro_batch_size`` per forward) and
  replayed for ``epochs`` passes, so a rollout gives ``epochs × rows / batch_size`` optimizer steps;
* the run ends after ``rollouts`` rollouts. ``train.max_steps: -1`` (the RL default) means "derived":
  ``rollouts × steps_per_rollout``; a positive ``train.max_steps`` caps optimizer steps as well,
  whichever limit comes first. An approx-KL early stop skips the rest of a rollout's steps.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignloop.algos import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from alignloop.config import SamplingSettings, Section, StageConfig

__all__ = ["RLOptions", "RolloutSettings", "check_rollout_shape", "check_sampler_logprobs", "steps_per_rollout"]


class RLOptions(SamplingSettings.defaults(max_new_tokens=48)):
    greedy_allowed = False  # training log-probs are taken at the sampling temperature
    reward: Any = Field(
        None,
        description="Reward source: a reward-model run dir, 'module:function', 'rule:<name>', or a list of "
        "{source, weight, args} (weighted sum; each part is logged).",
    )
    rollouts: int = Field(20, gt=0, description="Rollout batches to generate; the run ends after the last one.")
    prompts_per_rollout: int = Field(8, gt=0, description="Prompts sampled per rollout (all processes together).")
    num_generations: int = Field(1, gt=0, description="Responses sampled per prompt (G).")
    share_prompt: bool = Field(
        True, description="With G > 1: a prompt's G responses share one copy of it in the policy and reference "
        "forwards (same log-probs up to summation order, fewer tokens; each mini-batch's rows are ordered by group; "
        "PPO's critic keeps plain rows). docs/grpo.md.",
    )
    generation_batch_size: int = Field(32, gt=0, description="Sequences decoded together.")
    epochs: int = Field(1, gt=0, description="Passes over each rollout (PPO epochs, μ in GRPO).")
    clip_eps: float = Field(0.2, gt=0, description="ε of the clipped surrogate (Schulman et al. 2017).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip ε (DAPO clip-higher); null = clip_eps.")
    policy_loss: str = Field(
        "ppo_clip", description="Registered policy loss (algos.POLICY_LOSSES: ppo_clip, vanilla, gspo, cispo)."
    )
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = Field(
        "token_mean",
        description="token_mean: every token weighs the same; seq_mean_token_mean: every response weighs the same; "
        "seq_mean_token_sum: per-response token sum / max_new_tokens (Dr. GRPO). See docs/grpo.md for length bias.",
    )
    kl_coef: float = Field(0.05, ge=0, description="β of the KL penalty to the reference.")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field("k1", description="Per-token KL estimator (Schulman 2020).")
    target_kl: float | None = Field(
        None, gt=0, description="Early stop: skip the rest of a rollout's updates "
        "once policy/approxkl_avg exceeds this."
    )
    ptx_coef: float = Field(
        0.0, ge=0, description="PPO-ptx (InstructGPT): add ptx_coef × the mean next-token loss of ptx_batch_size "
        "ptx_data demonstrations to every policy loss (0: off; docs/ppo.md).")
    ptx_data: str | None = Field(None, description="Demonstrations for ptx_coef: SFT records, e.g. the SFT data.")
    ptx_batch_size: int = Field(4, gt=0, description="Demonstrations per policy forward (ptx_coef > 0).")
    truncation: Literal["keep", "penalty", "penalty_gap", "adaptive", "residual", "score", "exclude"] = Field(
        "keep",
        description="Responses with no EOS (hit max_new_tokens): keep as scored; penalty: subtract truncation_value; "
        "penalty_gap: subtract truncation_value × the running gap between the mean score of cut and of finished "
        "responses (1.0: running long earns nothing on average); adaptive: subtract coef × the running score std, "
        "coef starting at truncation_value and moved by truncation_gain × (cut rate − truncation_target) after "
        "each rollout, never below its start; residual: subtract what a least-squares fit of the score on the "
        "answer's length and on being cut (over every rollout so far) predicts beyond the mean, so length earns "
        "nothing either way; score: replace the score by truncation_value; exclude: leave them out of the losses.",
    )
    truncation_value: float = Field(1.0, description="Penalty or replacement score for truncated responses "
                                    "(adaptive: the starting and smallest coefficient, in score std units).")
    truncation_gain: float = Field(2.0, ge=0, description="adaptive: coefficient change per unit of cut-rate error.")
    truncation_target: float | None = Field(
        None, ge=0, le=1, description="adaptive: the cut rate to hold (None: the first rollout's, i.e. the starting "
        "policy's before any update).")
    overlong_buffer: int | None = Field(
        None, gt=0, description="DAPO soft overlong punishment: L_cache in tokens, added to the reward as 0 up to "
        "max_new_tokens − L_cache, then falling linearly to −overlong_penalty at max_new_tokens (null: off).",
    )
    overlong_penalty: float = Field(1.0, ge=0, description="Scale of the overlong punishment (1 in DAPO).")
    reward_norm: Literal["none", "batch", "running"] = Field(
        "none", description="Normalise scores to mean 0 / std 1 per rollout (batch) or with running statistics."
    )
    reward_clip: float | None = Field(None, gt=0, description="Clip (normalised) scores to ±reward_clip.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient (adds -coef·H to the loss).")
    reuse_sampler_logprobs: bool = Field(
        True, description="Use the sampler's log-probs as the old log-probs (saves one policy forward per rollout). "
        "false: the trainer's forward gives them, and the sampler–trainer gap is logged (rollout/logprob_diff_mean).",
    )
    tis: float | None = Field(
        None, gt=0, description="Truncated importance sampling cap C (e.g. 2.0): weight each token's policy-gradient "
        "loss by min(π_old/π_sampler, C) (docs/grpo.md). Needs the trainer's own old log-probs, so it sets "
        "reuse_sampler_logprobs: false; π_sampler is under the top-k/top-p distribution the token was drawn from "
        "(rollout.sampler_logprobs: auto). null: off.",
    )
    tis_mode: Literal["truncate", "mask"] = Field(
        "truncate", description="truncate: weight min(ρ, C) (TIS); mask: weight ρ, or 0 where ρ > C (masked IS).")
    tis_level: Literal["token", "sequence"] = Field(
        "token", description="token: one ratio per token; sequence: the response's ratio exp(Σ_t Δ_t) on each token.")
    async_rollouts: bool = Field(
        False, description="Sample the next rollout(s) in a background thread, on a copy of the policy, while this "
        "one trains (one-step-off-policy; docs/grpo.md). Sets reuse_sampler_logprobs: false and tis: 2.0 unless set.",
    )
    max_staleness: int = Field(
        1, ge=0, description="async_rollouts: rollout k is sampled with the weights after rollout k − max_staleness "
        "(exactly, so runs are reproducible). 0: no overlap (the synchronous results through the async path).",
    )
    rollout_threads: int | None = Field(
        None, gt=0, description="async_rollouts: torch intra-op threads of the sampling thread (null: as the "
        "process). The training thread keeps its own (OMP_NUM_THREADS / torch.set_num_threads).",
    )
    gold: str | None = Field(
        None, description="Gold scorer logged next to the proxy reward ('vader' or module:function)."
    )
    samples_every: int = Field(1, ge=0, description="Write a few samples to samples.jsonl every N rollouts (0: never).")
    samples_count: int = Field(4, gt=0, description="Samples written each time.")
    eval_prompts: int = Field(64, ge=0, description="Eval prompts decoded greedily by evaluate() (0: no evaluation).")
    eval_before: bool = Field(True, description="Also evaluate before the first update (reported in summary.json).")

    @model_validator(mode="before")
    @classmethod
    def _tis_needs_trainer_logprobs(cls, data: Any) -> Any:
        """``tis`` compares the trainer's old log-probs with the sampler's: both must be computed. Async rollouts
        were sampled by older weights: their log-probs are not π_old, and TIS (2.0 unless set) corrects the gap."""
        if isinstance(data, dict) and data.get("async_rollouts") is True:
            if data.get("reuse_sampler_logprobs") is True:
                raise ValueError("async_rollouts: the sampler's log-probs are those of older weights; the trainer "
                                 "computes π_old itself (leave reuse_sampler_logprobs unset or false)")
            data = {**data, "reuse_sampler_logprobs": False, "tis": data.get("tis", 2.0)}
        if not isinstance(data, dict) or data.get("tis") is None:
            return data
        if data.get("reuse_sampler_logprobs") is True:
            raise ValueError("tis needs the trainer's own old log-probs: set reuse_sampler_logprobs: false (or "
                             "leave it unset)")
        return {**data, "reuse_sampler_logprobs": False}


class RolloutSettings(Section):
    """Where rollouts are sampled. ``workers: 0`` samples in the learner process (every launcher, torchrun and
    accelerate included); ``workers ≥ 1`` runs the stage on Ray (``alignloop.distributed.ray_stage``)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate loop (CPU or GPU); "
        "vllm: vLLM engines (CUDA, needs rollout.workers ≥ 1)."
    )
    workers: int = Field(0, ge=0, description="Ray rollout workers (0: sample in the learner process, no Ray).")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs per rollout worker (fractions colocate roles on one GPU).")
    learner_gpus: float = Field(0.0, ge=0, description="GPUs for the learner actor.")
    remote_reward: bool = Field(False, description="Score on a separate reward actor.")
    remote_reference: bool = Field(False, description="Reference log-probs on a separate reference actor.")
    address: str | None = Field(None, description="An existing Ray cluster (null: start a local one).")
    vllm: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine options (gpu_memory_utilization, max_model_len, ...)."
    )
    static_cache: bool = Field(
        True, description="hf backend: preallocated KV cache written in place instead of grown by concatenation "
        "(identical samples; docs/rollout.md)."
    )
    share_prefix: bool = Field(
        True, description="hf backend: the prompt prefix all rows of a decode batch share (the chat template's "
        "system text) is prefilled once (same results up to float rounding; docs/rollout.md)."
    )
    sampler_logprobs: Literal["auto", "full", "sampled"] = Field(
        "auto", description="hf backend (in the learner or in Ray rollout workers): the log-probs the sampler "
        "reports. full: softmax(logits/T) over the whole vocabulary (what the trainer computes: needed by "
        "reuse_sampler_logprobs); sampled: under the distribution each token was really drawn from (the top-k/top-p "
        "candidates renormalised), so tis sees the truncation; auto: sampled when tis is set (async_rollouts sets "
        "it), full otherwise.",
    )

    def logprobs_for(self, opts: Any) -> Literal["full", "sampled"]:
        """``sampler_logprobs`` with ``auto`` resolved for the stage options ``opts`` (``tis`` already resolved). The HF
        sampler (in the learner or in Ray workers) can report either; vLLM reports what ``rollout.vllm``'s
        ``logprobs_mode`` asks for, so ``auto`` means ``full`` there."""
        if self.sampler_logprobs != "auto":
            return self.sampler_logprobs
        return "sampled" if getattr(opts, "tis", None) is not None and self.backend == "hf" else "full"

    def sampler_options(self, opts: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``HFSampler`` these settings give (for the stage options ``opts``)."""
        return {"static_cache": self.static_cache, "share_prefix": self.share_prefix,
                "logprobs": self.logprobs_for(opts)}


def steps_per_rollout(opts: RLOptions, batch_size: int) -> int:
    rows = opts.prompts_per_rollout * opts.num_generations
    return opts.epochs * (rows // batch_size)


def check_rollout_shape(cfg: StageConfig, opts: RLOptions, section: str) -> None:
    """Raise ValueError (shown as a config error) when a rollout cannot be cut into whole mini-batches."""
    rows = opts.prompts_per_rollout * opts.num_generations
    if rows % cfg.train.batch_size:
        raise ValueError(
            f"{section}.prompts_per_rollout × {section}.num_generations ({opts.prompts_per_rollout} × "
            f"{opts.num_generations} = {rows}) must be a multiple of train.batch_size ({cfg.train.batch_size})"
        )
    if opts.policy_loss not in POLICY_LOSSES:
        raise ValueError(
            f"{section}.policy_loss: unknown {opts.policy_loss!r}; known: {', '.join(sorted(POLICY_LOSSES))}"
        )
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.backend == "vllm" and rollout.workers < 1:
        raise ValueError("rollout.backend: 'vllm' runs in Ray rollout workers; set rollout.workers ≥ 1")
    if rollout is not None:
        check_sampler_logprobs(rollout, opts, section)
    if opts.overlong_buffer is not None and opts.overlong_buffer > opts.max_new_tokens:
        raise ValueError(f"{section}.overlong_buffer ({opts.overlong_buffer}) must be at most {section}.max_new_tokens "
                         f"({opts.max_new_tokens})")
    if opts.ptx_coef > 0 and not opts.ptx_data:
        raise ValueError(f"{section}.ptx_data: {section}.ptx_coef > 0 needs demonstrations (SFT records)")
    if opts.loss_agg not in AGGREGATIONS or opts.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"{section}: unknown loss_agg or kl_estimator")


def check_sampler_logprobs(rollout: RolloutSettings, opts: RLOptions, section: str) -> None:
    """Raise ValueError when ``rollout.sampler_logprobs: sampled`` cannot be honoured or would be misused."""
    if rollout.sampler_logprobs != "sampled":
        return
    if opts.reuse_sampler_logprobs:
        # π_old must be the policy's full-vocabulary log-prob, the one the trainer's new log-probs are compared with
        raise ValueError(f"rollout.sampler_logprobs: 'sampled' log-probs are not the policy's own, so they cannot be "
                         f"π_old: set {section}.reuse_sampler_logprobs: false (or {section}.tis)")
    if rollout.backend != "hf":
        raise ValueError("rollout.sampler_logprobs: 'sampled' is an hf-backend setting; for vLLM pass "
                         "rollout.vllm: {logprobs_mode: processed_logprobs}")
