"""Reward modelling: a scalar head on a causal-LM backbone learns which completion people prefer.

One step function on the shared loop. A micro-batch of pair and ranking records is scored in ONE forward
pass where every prompt and every unique completion is encoded once (``models/shared_prompt.py``); the loss is
Bradley–Terry for pairs and InstructGPT's all-pairs or Plackett–Luce for rankings (``rm_loss``).
Ensembles (``rm.ensemble.size > 1``) are k ordinary runs into ``member-<i>/`` (``rm_ensemble``).
A vision-language model (``model`` a VLM folder or name) trains on records with ``images``: the head sits on its
base model, each packed row carries its prompts' images, and the processor is saved beside the weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from alignloop.errors import ConfigError, ModelError
from alignloop.eval.rm_report import length_bias_summary, preference_metrics, write_rm_report
from alignloop.models import (
    ScalarHeadModel,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from alignloop.models.files import is_scalar_head_dir, write_json
from alignloop.models.loading import load_vision_processor
from alignloop.models.scalar_head import score_groups
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.stages.rm.config import DEFAULT_INIT, FALLBACK_INIT, EnsembleOptions, RMConfig, RMOptions
from alignloop.stages.rm.data import (
    PreferenceBatch,
    PreferenceExample,
    collate_preferences,
    load_rm_examples,
)
from alignloop.stages.rm.debias import LENGTH_HEAD, add_length_head, orthogonality_term, quality_heads_only
from alignloop.stages.rm.loss import LossSettings, evaluate_examples, preference_loss
from alignloop.stages.rm.probe import FeatureCache, freeze_backbone, head_l2_penalty
from alignloop.train.batches import EpochBatchSource, PromptGroupedBatchSource
from alignloop.train.stage import Stage, StepOutput

__all__ = ["EnsembleOptions", "RMConfig", "RMOptions", "RMStage", "RM_SETTINGS_FILE", "OVERALL", "load_rm_examples"]

log = logging.getLogger("alignloop")

RM_SETTINGS_FILE = "alignloop_rm.json"  # beside the model: how to tokenise and pack for scoring
OVERALL = "score"  # name of head 0, trained on the chosen/rejected (or ranking) label
def resolve_init(name: str) -> str:
    """``runs/sft`` (the default) falls back to the bundled model when no SFT run exists yet."""
    if name == DEFAULT_INIT and not Path(name).is_dir():
        log.warning("rm: model %s not found (no SFT run yet); starting from %s", name, FALLBACK_INIT)
        return FALLBACK_INIT
    return name


def output_names(options: RMOptions) -> list[str]:
    """The heads the saved model has: the overall score and one per criterion (ODIN's length head is not saved)."""
    names = [OVERALL, *options.criteria]
    if len(set(names)) != len(names):
        raise ConfigError(f"rm.criteria: names must be unique and not {OVERALL!r} (got {options.criteria})")
    if options.length_debias == "odin" and LENGTH_HEAD in names:
        raise ConfigError(f"rm.criteria: {LENGTH_HEAD!r} is the name of ODIN's length head (rm.length_debias: odin)")
    return names


def loss_settings(options: RMOptions) -> LossSettings:
    return LossSettings(options.ranking_loss, options.use_margin, options.center_coef, list(options.criteria),
                        options.length_debias, options.odin_length_coef)


def load_scalar_model(cfg: RMConfig, names: list[str]) -> ScalarHeadModel:
    """A fresh head on the backbone, or (for an RM directory) the saved reward model to train further.

    ``names``: the saved heads; with ODIN a length head is added last (a saved model never has one)."""
    init = resolve_init(cfg.model)
    source = resolve_model(init)
    odin = cfg.rm.length_debias == "odin"
    if isinstance(source, Path) and is_scalar_head_dir(source):
        model = ScalarHeadModel.from_pretrained(source)
        if model.output_names != names:
            raise ModelError(f"model {init}: its heads {model.output_names} differ from the configured {names}")
        if cfg.lora is not None and not model.is_lora:
            raise ConfigError("lora: cannot add a LoRA adapter to a saved full reward model; drop `lora`")
        return add_length_head(model) if odin else model
    # an SFT LoRA run is merged into plain weights first: the head sits on base + SFT adapter
    causal_lm = load_causal_lm(init, merge=True)
    heads = [*names, *([LENGTH_HEAD] if odin else [])]
    return ScalarHeadModel.from_causal_lm(causal_lm, len(heads), lora=cfg.lora, output_names=heads)


def collate_for(
    cfg: RMConfig, pad_id: int, examples: list[PreferenceExample], image_token_id: int | None = None
) -> PreferenceBatch:
    max_segment = cfg.rm.pack_length or 2 * cfg.data.max_length
    return collate_preferences(examples, pad_id, share_prompt=cfg.rm.share_prompt, max_segment=max_segment,
                               image_token_id=image_token_id)


class RMStage(Stage):
    name = "rm"
    config: RMConfig

    def __init__(self, config: RMConfig):
        super().__init__(config)
        self.member = config.rm.ensemble.member or 0
        self.settings = loss_settings(config.rm)
        self.last_scores = None
        self._best_eval = math.inf
        self._bad_evals = 0
        self._stop = False
        self._last_epoch = 0
        self._total_steps = 0
        self.counts: dict[str, int] = {}
        self.features: FeatureCache | None = None  # rm.head_only: the frozen backbone's cached features
        self.feature_std: torch.Tensor | None = None

    # --- setup ----------------------------------------------------------------------------
    def setup(self, run) -> None:
        cfg, opts = self.config, self.config.rm
        if opts.ensemble.size > 1 and opts.ensemble.member is None:
            raise ConfigError(
                "rm.ensemble.size > 1: train ensembles with `alignloop rm` (RMCommand), "
                "which runs one member per member-<i>/ directory"
            )
        names = output_names(opts)
        # members differ in head initialisation and data order (and data, with bootstrap)
        torch.manual_seed(cfg.train.seed + self.member)
        model = load_scalar_model(cfg, names)
        init = resolve_init(cfg.model)
        # a vision-language model tokenises through its processor (images included) and saves it with the model
        self.processor = load_vision_processor(init) if model.is_vision else None
        self.tokenizer = self.processor.tokenizer if self.processor is not None else load_tokenizer(init)
        self.vision = VisionTokenizer(self.processor) if self.processor is not None else None
        self.image_token_id = self.vision.encoder.image_token_id if self.vision is not None else None
        train, evals, self.counts = load_rm_examples(cfg, self.tokenizer, vision=self.vision)
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model.backbone)
        self.models["rm"] = model.to(run.device)
        if opts.ensemble.bootstrap and opts.ensemble.size > 1:
            g = torch.Generator().manual_seed(cfg.train.seed * 7919 + self.member)
            train = [train[i] for i in torch.randint(len(train), (len(train),), generator=g).tolist()]
        self.train_examples, self.eval_examples = train, evals
        self.eval_batches = self._batches_of(evals)
        if opts.head_only:
            self._cache_features(run, model)
        log.info("rm: %d train, %d eval records; heads %s", len(train), len(evals), names)

    def _cache_features(self, run, model: ScalarHeadModel) -> None:
        if self.config.lora is not None or run.world_size > 1:
            raise ConfigError("rm.head_only trains the head alone on one process: drop `lora` and run one process")
        freeze_backbone(model)
        self.features = FeatureCache(model, run.device, run.autocast)
        self.features.encode(self._batches_of(self.train_examples), "rm: encoding train")
        self.features.encode(self.eval_batches, "rm: encoding held-out")
        self.feature_std = self.features.feature_std(self.train_examples)

    def _scores(self, model, packed_batch: PreferenceBatch) -> torch.Tensor:
        if self.features is not None:
            return self.features.scores(self.unwrap("rm").head, packed_batch)
        return score_groups(model, packed_batch.packed.to(self.run.device)).float()

    def _collate(self, examples: list[PreferenceExample]) -> PreferenceBatch:
        return collate_for(self.config, self.tokenizer.pad_token_id, examples, self.image_token_id)

    def _batches_of(self, examples: list[PreferenceExample]) -> list[PreferenceBatch]:
        micro = self.config.train.micro_batch_size or self.config.train.batch_size
        return [self._collate(examples[i : i + micro]) for i in range(0, len(examples), micro)]

    def batches(self):
        tc = self.config.train
        run = self.run
        micro = tc.micro_batch_size or tc.batch_size
        common = dict(seed=tc.seed + self.member, rank=run.rank, world_size=run.world_size)
        if self.config.rm.group_by_prompt:
            keys = [(tuple(ex.prompt_ids), tuple(im.source for im in ex.images)) for ex in self.train_examples]
            source = PromptGroupedBatchSource(self.train_examples, micro, self._collate, keys=keys, **common)
        else:
            source = EpochBatchSource(self.train_examples, micro, self._collate, **common)
        accum = max(1, tc.batch_size // (micro * run.world_size))
        per_epoch = source.batches_per_epoch
        self._total_steps = tc.max_steps if tc.max_steps >= 0 else max(1, math.ceil(tc.epochs * per_epoch / accum))
        return source

    # --- step -----------------------------------------------------------------------------
    def units(self, batch: PreferenceBatch) -> float:
        return float(len(batch.examples))

    def step(self, batch: PreferenceBatch) -> StepOutput:
        packed = batch.packed
        scores = self._scores(self.models["rm"], batch)
        loss, metrics = preference_loss(scores, batch, self.settings)
        if self.config.rm.head_l2:
            std = self.feature_std if self.feature_std is not None else torch.ones(())  # plain L2 without features
            penalty = head_l2_penalty(self.unwrap("rm").head.weight, std)
            loss = loss + self.config.rm.head_l2 * penalty * len(batch.examples)
        if self.settings.odin and self.config.rm.odin_ortho_coef:
            ortho = orthogonality_term(self.unwrap("rm"))
            loss = loss + self.config.rm.odin_ortho_coef * ortho * len(batch.examples)
        return StepOutput(loss=loss, units=len(batch.examples), n_tokens=packed.n_tokens, metrics=metrics)

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        if not self.eval_batches:
            return {}
        model = self.models["rm"]
        by_packed = {id(b.packed): b for b in self.eval_batches}
        with self.eval_mode():
            metrics, self.last_scores = evaluate_examples(
                self.eval_batches,
                lambda packed: (self._scores(model, by_packed[id(packed)]).cpu(), None),
                self.settings,
                self.config.rm.calibration_bins,
            )
        self._track_early_stopping(metrics["eval/loss"])
        return metrics

    def _track_early_stopping(self, eval_loss: float) -> None:
        patience = self.config.rm.early_stopping_patience
        if eval_loss < self._best_eval - self.config.rm.early_stopping_min_delta:
            self._best_eval, self._bad_evals = eval_loss, 0
        else:
            self._bad_evals += 1
        if patience and self._bad_evals >= patience:
            if not self._stop:
                log.info("rm: early stop: eval loss has not improved for %d evaluations", self._bad_evals)
            self._stop = True

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        # held-out evaluation at each epoch end (the loop adds its own eval_every evaluations and a final one)
        epoch = int(metrics.get("epoch", 0.0) + 1e-9)
        finished_epoch = epoch > self._last_epoch
        self._last_epoch = max(self._last_epoch, epoch)
        every = self.config.train.eval_every
        scheduled = bool(every) and step % every == 0
        if finished_epoch and self.config.rm.eval_each_epoch and step < self._total_steps and not scheduled:
            metrics.update(self.evaluate())

    def should_stop(self) -> bool:
        return self._stop

    def state_dict(self) -> dict:
        return {"best_eval": self._best_eval, "bad_evals": self._bad_evals, "stop": self._stop,
                "last_epoch": self._last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self._best_eval = float(state.get("best_eval", math.inf))
        self._bad_evals = int(state.get("bad_evals", 0))
        self._stop = bool(state.get("stop", False))
        self._last_epoch = int(state.get("last_epoch", 0))

    # --- results --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        if self.last_scores is not None:
            held_out = preference_metrics(self.last_scores.winners, self.last_scores.losers,
                                          self.config.rm.calibration_bins)
            out.update(eval_accuracy=held_out["accuracy"], eval_ece=held_out["ece"], eval_margin=held_out["margin"])
            out.update(length_bias_summary(self.last_scores))
        if self._stop:
            out["early_stopped"] = True
        return out

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        model_dir = out_dir / "model"
        with quality_heads_only(self.unwrap("rm")) as model:  # ODIN's length head is dropped here
            model.save_pretrained(model_dir, tokenizer=self.processor or self.tokenizer)
        write_json(model_dir / RM_SETTINGS_FILE, scoring_settings(self.config))
        if self.last_scores is not None:
            write_rm_report(
                out_dir, self.last_scores, metrics_path=out_dir / "metrics.jsonl",
                title="Reward model report", n_bins=self.config.rm.calibration_bins,
            )


def scoring_settings(cfg: RMConfig) -> dict[str, Any]:
    """What ``RewardModel.load`` needs to tokenise and pack exactly as in training."""
    return {
        "max_length": cfg.data.max_length,
        "max_prompt_length": cfg.rm.max_prompt_length or cfg.data.max_length // 2,
        "share_prompt": cfg.rm.share_prompt,
        "pack_length": cfg.rm.pack_length or 2 * cfg.data.max_length,
        "criteria": list(cfg.rm.criteria),
        "length_debias": cfg.rm.length_debias,  # a record of how it was trained; scoring needs nothing else
    }
