"""Reward-model ensembles: k ordinary runs of the RM stage through the one loop, then one evaluation.

Member ``i`` trains in ``<out>/member-<i>/`` with its own head initialisation and data order (seed
``train.seed + i``; ``rm.ensemble.bootstrap`` also resamples its data), on the same held-out split. Each member
directory is a complete run (metrics, checkpoints, summary, report) and resumes on its own; a member with a
``summary.json`` is not trained again. ``<out>/model/ensemble.json`` lists the members, so
``RewardModel.load(<out>)`` scores with the mean and reports the std as uncertainty. Members trained with
LoRA on one base share a single backbone at scoring time.

Why sequential runs rather than k heads in one step: each member is exactly a normal reward model (same
code, resume, report), memory holds one model while training, and full or LoRA members work alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignloop.eval.rm_report import length_bias_summary, write_rm_report
from alignloop.models.files import HEAD_META, write_json
from alignloop.rewards.model import ENSEMBLE_FILE, RewardModel
from alignloop.stages.rm.loss import evaluate_examples
from alignloop.stages.rm.stage import RMConfig, RMStage, collate_for, load_rm_examples, loss_settings
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage

log = logging.getLogger("alignloop")


def member_dir(out_dir: Path, index: int) -> Path:
    return out_dir / f"member-{index}"


def _member_done(folder: Path) -> bool:
    return (folder / "summary.json").is_file() and (folder / "model" / HEAD_META).is_file()


class RMCommand(StandaloneStage):
    """``alignloop rm``: one ``RMStage`` run through the loop, or k member runs and the ensemble's evaluation."""

    name = "rm"

    @classmethod
    def run(cls, cfg: RMConfig, run_dir: RunDir) -> dict[str, Any]:
        if cfg.rm.ensemble.size == 1 or cfg.rm.ensemble.member is not None:
            return train(RMStage(cfg), run_dir.path)
        return train_ensemble(cfg, run_dir)


def train_ensemble(cfg: RMConfig, run_dir: RunDir) -> dict[str, Any]:
    """Train ``cfg.rm.ensemble.size`` members, write the manifest, evaluate the ensemble, return the summary."""
    size = cfg.rm.ensemble.size
    out_dir = run_dir.begin(cfg).path
    summaries = []
    for index in range(size):
        folder = member_dir(out_dir, index)
        if _member_done(folder):
            log.info("rm: ensemble member %d/%d already trained in %s", index + 1, size, folder)
            summaries.append(json.loads((folder / "summary.json").read_text()))
            continue
        log.info("rm: training ensemble member %d/%d in %s", index + 1, size, folder)
        member_cfg = cfg.model_copy(deep=True)
        member_cfg.rm.ensemble.member = index
        summaries.append(train(RMStage(member_cfg), folder))

    (out_dir / "model").mkdir(exist_ok=True)
    members = [f"../member-{i}/model" for i in range(size)]
    write_json(out_dir / "model" / ENSEMBLE_FILE, {"members": members, "size": size})

    summary: dict[str, Any] = {"stage": "rm", "ensemble_size": size, "steps": max(s.get("steps", 0) for s in summaries)}
    model = RewardModel.load(out_dir)
    _, evals, counts = load_rm_examples(cfg, model.tokenizer, with_train=False, vision=model.vision)
    image_token_id = model.vision.encoder.image_token_id if model.vision is not None else None
    summary["eval_records"] = counts["eval_records"]
    for key in ("eval_accuracy", "eval_ece"):
        summary[f"member_{key}"] = [s.get(key) for s in summaries]
    metrics: dict[str, float] = {}
    if evals:
        micro = cfg.train.micro_batch_size or cfg.train.batch_size
        batches = [collate_for(cfg, model.tokenizer.pad_token_id, evals[i : i + micro], image_token_id)
                   for i in range(0, len(evals), micro)]
        # saved members hold no ODIN length head: they are scored as plain reward models
        settings = replace(loss_settings(cfg.rm), length_debias="none")
        metrics, scores = evaluate_examples(batches, model.score_packed, settings, cfg.rm.calibration_bins)
        summary.update(metrics)
        summary.update(eval_accuracy=metrics["eval/accuracy"], eval_ece=metrics["eval/ece"],
                       eval_margin=metrics["eval/margin"])
        summary.update(length_bias_summary(scores))
        member_rows = {f"member {i} eval accuracy": s.get("eval_accuracy") for i, s in enumerate(summaries)}
        write_rm_report(
            out_dir, scores, title=f"Reward-model ensemble ({size} members)",
            extra_rows={k: v for k, v in member_rows.items() if v is not None}, n_bins=cfg.rm.calibration_bins,
        )
    with (out_dir / "metrics.jsonl").open("w") as handle:  # the ensemble's own line; members keep their curves
        handle.write(json.dumps({"step": summary["steps"], **metrics}) + "\n")
    return run_dir.finish(summary)
