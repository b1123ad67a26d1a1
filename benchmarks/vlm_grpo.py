"""VLM GRPO updates/s and peak memory: alignloop vs TRL 1.9.0's ``GRPOTrainer``, in one run.

Workload (both sides): the bundled ``smolvlm-tiny`` (SmolVLM/Idefics3 layout: SmolLM2-135M-Instruct + a 2-layer
SigLIP, 128 px images, 16 image tokens each), loaded by both from the same folder, with LoRA (r 16, α 32) on the
language model's attention and MLP projections only and the connector trained in full (alignloop's default
``lora.vision=connector``; TRL: the same ``target_modules`` regex and ``modules_to_save=["connector"]``), bf16
autocast (both tools' default; ``--precision fp32`` for full precision), gradient checkpointing on (both
defaults), 8 image prompts of bundled:vlm_shapes/prompts.jsonl (one image each) × 4 generations × up to 8 new
tokens at temperature 1, reward exact match against the record's answer, β = 0.04 (k3 KL in the loss, reference =
adapter off), one optimizer step on all 32 completions per generation round, token-level loss aggregation.

Both sides render the same prompt tokens: TRL gets the prompt as content blocks (an image block, then the
question), and its processor's chat template is SmolLM2's with an image block written ``<image>``, which is
the text alignloop renders before expanding the image tokens.

Throughput = updates per second over updates 2..N (update 1 is warm-up); one update = one rollout of 32
completions + one optimizer step on both sides. Each side runs in its own process; each reports its mean
completion length (``completion_tokens``: both stop at EOS) and its trainable parameter count.

    python benchmarks/vlm_grpo.py [--updates 4] [--precision bf16|fp32]  # last line: the JSON summary
    python benchmarks/vlm_grpo.py --runs 3                    # median and min-max spread of 3 run pairs

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl19-venv in the clone, created on first
use with ``trl==1.9.0 --no-deps`` over the system site-packages), ``--threads``, ``--precision``, ``--runs N``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TRL19_VENV,
    StepClock,
    add_common_flags,
    check_common_flags,
    ensure_venv,
)
from side_by_side import compare_sides  # noqa: E402

MODEL = "smolvlm-tiny"
DATA = "bundled:vlm_shapes/prompts.jsonl"
TRL_REQUIREMENT = ["trl==1.9.0", "--no-deps"]  # its GRPOTrainer takes a ProcessorMixin and an ``images`` column
PROMPTS, GENERATIONS, NEW_TOKENS, LR, BETA = 8, 4, 8, 1e-5, 0.04
# alignloop.models.vision.language_model_lora_targets for Idefics3/SmolVLM (the TRL side cannot rely on alignloop)
LM_TARGETS = r"^(?:model\.text_model)\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
IMAGE_PLACEHOLDER = "<image>"


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def alignloop_side(updates: int, workdir: str, precision: str = "bf16") -> dict:
    import torch

    from alignloop.config import load_config
    from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
    from alignloop.train.loop import train

    torch.manual_seed(0)
    clock = StepClock()
    lengths: list[float] = []
    trainable: list[int] = []

    class Timed(GRPOStage):
        def setup(self, run):
            super().setup(run)
            trainable.append(sum(p.numel() for p in self.models["policy"].parameters() if p.requires_grad))

        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            clock.tick()
            if "completions/mean_length" in metrics:
                lengths.append(float(metrics["completions/mean_length"]))

    cfg = load_config(GRPOConfig, None, [
        f"model={MODEL}", f"data.train={DATA}", "data.eval=null", "grpo.reward=rule:exact_match", "lora.r=16",
        "lora.alpha=32", f"grpo.rollouts={updates}", f"grpo.prompts_per_rollout={PROMPTS}",
        f"grpo.num_generations={GENERATIONS}", f"grpo.max_new_tokens={NEW_TOKENS}", f"grpo.kl_coef={BETA}",
        "grpo.eval_prompts=0", "grpo.samples_every=0", f"train.batch_size={PROMPTS * GENERATIONS}", f"train.lr={LR}",
        f"train.precision={precision}", "train.save_every=0",
    ])
    train(Timed(cfg), Path(workdir) / "run")
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "completion_tokens": _mean(lengths), "trainable_params": trainable[0]}


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _exact_match(prompts, completions, answer, **kwargs):
    """1.0 when the completion's text (whitespace and case folded) equals the record's answer."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if _norm(text) == _norm(gold) else 0.0 for text, gold in zip(texts, answer)]


def _multimodal_template(template: str) -> str:
    """The model's string-content chat template, also taking content blocks (an image block -> ``<image>``)."""
    macro = ("{% macro render(content) %}{% if content is string %}{{ content }}{% else %}{% for part in content %}"
             f"{{% if part['type'] == 'image' %}}{IMAGE_PLACEHOLDER}{{% else %}}{{{{ part['text'] }}}}{{% endif %}}"
             "{% endfor %}{% endif %}{% endmacro %}")
    if "message['content']" not in template:
        raise ValueError("unexpected chat template: no message['content']")
    return macro + template.replace("message['content']", "render(message['content'])")


def _trl_records(data_file: str, count: int) -> list[dict]:
    from PIL import Image

    root = Path(data_file).parent
    records = []
    with open(data_file) as handle:
        for line in handle:
            if len(records) == count:
                break
            record = json.loads(line)
            prompt = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, "")} for m in record["prompt"]]
            images = [Image.open(root / entry).convert("RGB") for entry in record["images"]]
            records.append({"prompt": prompt, "images": images, "answer": record["answer"]})
    return records


def trl_side(updates: int, workdir: str, model_dir: str, data_file: str, precision: str = "bf16") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    data = Dataset.from_list(_trl_records(data_file, PROMPTS * updates))
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left", local_files_only=True)
    processor.chat_template = _multimodal_template(processor.chat_template)
    clock = StepClock()
    lengths: list[float] = []

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    args = GRPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
        gradient_accumulation_steps=1, num_generations=GENERATIONS, max_completion_length=NEW_TOKENS,
        temperature=1.0, beta=BETA, learning_rate=LR, max_steps=updates, num_iterations=1, loss_type="dapo",
        report_to=[], save_strategy="no", bf16=precision == "bf16", use_cpu=True, seed=0, logging_steps=1,
        shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True),
        reward_funcs=_exact_match, args=args, train_dataset=data, processing_class=processor, callbacks=[Tick()],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LM_TARGETS, modules_to_save=["connector"],
                               task_type="CAUSAL_LM"),
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "completion_tokens": _mean(lengths), "trainable_params": trainable,
            "version": __import__("trl").__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=4)
    add_common_flags(p, trl_venv=TRL19_VENV, precision="bf16",
                     precision_help="both sides: bf16 autocast (both tools' default) or fp32")
    args = p.parse_args(argv)
    check_common_flags(p, args)
    trl_python = ensure_venv(args.trl_venv, TRL_REQUIREMENT)

    from alignloop.data.records import resolve_data_path
    from alignloop.models.registry import resolve_model

    model_dir, data_file = str(resolve_model(MODEL)), str(resolve_data_path(DATA))  # built once, before timing
    workload = (f"{MODEL}: {PROMPTS} image prompts × {GENERATIONS} generations × {NEW_TOKENS} tokens, LoRA "
                f"(language model) + connector, β={BETA}")
    return compare_sides(__file__, "vlm_grpo", args, trl_python, {"updates": args.updates, "precision": args.precision},
                         workload, trl_kwargs={"model_dir": model_dir, "data_file": data_file})


if __name__ == "__main__":
    main()
