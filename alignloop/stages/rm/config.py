"""The reward-model stage's config: ``rm:`` options, ensembles, and the stage's defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignloop.config import DataConfig, Section, StageConfig, TrainConfig

__all__ = ["DEFAULT_INIT", "FALLBACK_INIT", "EnsembleOptions", "RMConfig", "RMOptions"]

DEFAULT_INIT = "runs/sft"
FALLBACK_INIT = "smollm2-135m-instruct"


class EnsembleOptions(Section):
    size: int = Field(1, ge=1, description="Reward models to train (k > 1: an ensemble; its std is the uncertainty).")
    bootstrap: bool = Field(False, description="Each member trains on a bootstrap resample of the data (bagging).")
    member: int | None = Field(
        None, ge=0, description="Set by the ensemble runner: which member this run is (seed and data order offset)."
    )


class RMOptions(Section):
    ranking_loss: Literal["pairwise", "plackett_luce"] = Field(
        "pairwise", description="Rankings: mean over all K(K−1)/2 ordered pairs (InstructGPT) or Plackett–Luce."
    )
    use_margin: bool = Field(True, description="Use a pair's `margin` field: −log σ(r_c − r_r − margin).")
    center_coef: float = Field(0.0, ge=0, description="Reward-centering weight: coef·(r_c + r_r)² keeps scores near 0.")
    criteria: list[str] = Field(
        default_factory=list, description="Per-criterion heads (e.g. [helpful, harmless]) "
        "trained from `criteria` labels."
    )
    more_train: list[str] = Field(
        default_factory=list, description="More training files (pairs or rankings) added to data.train."
    )
    max_prompt_length: int | None = Field(
        None, gt=0, description="Prompt tokens kept (cut from the left); default: half of data.max_length."
    )
    share_prompt: bool = Field(
        True, description="Encode each prompt once for all its completions (same scores, fewer tokens)."
    )
    group_by_prompt: bool = Field(
        False, description="Keep a prompt's pairs in the same batch (InstructGPT): its completions are encoded once "
        "(fewer tokens per pair), but batches are less diverse (on the tiny-model test, worse calibration)."
    )
    pack_length: int | None = Field(
        None, gt=8, description="Most tokens in one prompt+completions block; default: 2 × data.max_length."
    )
    eval_each_epoch: bool = Field(True, description="Evaluate on the held-out set at every epoch end.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without a lower eval loss (0: never)."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="A smaller drop of the eval loss does not count as an improvement."
    )
    calibration_bins: int = Field(10, ge=2, description="Bins of the expected calibration error.")
    length_debias: Literal["none", "odin"] = Field(
        "none", description="`odin`: train a length head beside the reward head (ODIN, Chen et al. 2024) and drop "
        "it when saving, so the saved reward is decorrelated from response length."
    )
    odin_length_coef: float = Field(
        1.0, ge=0, description="ODIN's length term weight: (1 − ρ(length head, len)) + abs(ρ(reward, len)) per batch."
    )
    odin_ortho_coef: float = Field(
        1.0, ge=0, description="ODIN's orthogonality weight: abs(cos) of the reward and length heads' weight vectors."
    )
    head_only: bool = Field(
        False, description="Train only the scalar head on frozen backbone features (a linear probe): the backbone "
        "runs once over every record, then the steps fit the head on the cached features (stages/rm/probe.py)."
    )
    head_l2: float = Field(
        0.0, ge=0, description="Ridge penalty head_l2·Σ(w·σ)² on the head, σ the train features' std (in units "
        "of standardised features); with head_only, 0.3 was best by 5-fold cross-validation on HH pairs."
    )
    ensemble: EnsembleOptions = Field(default_factory=EnsembleOptions)


class RMConfig(StageConfig):
    stage: Literal["rm"] = "rm"
    model: str = Field(
        DEFAULT_INIT, description="Initial backbone: an SFT run dir, a causal LM name/dir, or an RM dir."
    )
    data: DataConfig = Field(default_factory=lambda: DataConfig(eval_fraction=0.1, max_length=512))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=-1, epochs=1.0, lr=1e-5, batch_size=8))
    rm: RMOptions = Field(default_factory=RMOptions)
