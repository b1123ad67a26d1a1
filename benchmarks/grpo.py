"""GRPO updates/s and peak memory: alignloop vs TRL 1.9.0's ``GRPOTrainer``, in one run.

Workload (both sides): the bundled SmolLM2-135M-Instruct with LoRA (r 16, α 32, all linear layers), bf16
autocast (both tools' default; ``--precision fp32`` for full precision), gradient checkpointing on (both defaults),
8 arithmetic prompts (bundled:arith_train.jsonl) × 4 generations × up to 48 new tokens at temperature 1,
reward ``exact_match`` against the record's answer, β = 0.04 (k3 KL in the loss, reference = adapter off),
one optimizer step on all 32 completions per generation round, token-level loss aggregation.
``--loss gspo``: GSPO's sequence-level importance ratio on both sides (alignloop ``grpo.loss: gspo``; TRL
``importance_sampling_level="sequence"``, ``loss_type="grpo"``), clip range 3e-4 / 4e-4 (the paper's).

Throughput = updates per second over updates 2..N (update 1 is warm-up); one update = one rollout of 32
completions + one optimizer step on both sides. Each side runs in its own process.

    python benchmarks/grpo.py [--updates 4] [--precision bf16|fp32]  # last line: the JSON summary
    python benchmarks/grpo.py --runs 3                                # median and min-max spread of 3 run pairs
    python benchmarks/grpo.py --loss gspo --runs 3                    # the GSPO row

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl19-venv in the clone, created on first
use with ``trl==1.9.0 --no-deps`` over the system site-packages), ``--threads``, ``--precision``, ``--runs N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRL19_VENV, StepClock, add_common_flags, check_common_flags, ensure_venv  # noqa: E402
from side_by_side import compare_sides  # noqa: E402

MODEL = "smollm2-135m-instruct"
TRL_REQUIREMENT = ["trl==1.9.0", "--no-deps"]
PROMPTS, GENERATIONS, NEW_TOKENS, LR, BETA = 8, 4, 48, 1e-5, 0.04


def alignloop_side(updates: int, workdir: str, precision: str = "bf16", loss: str = "grpo") -> dict:
    import torch

    from alignloop.config import load_config
    from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
    from alignloop.train.loop import train

    torch.manual_seed(0)
    clock = StepClock()

    class Timed(GRPOStage):
        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            clock.tick()

    cfg = load_config(GRPOConfig, None, [
        f"model={MODEL}", "grpo.reward=rule:exact_match", "lora.r=16", "lora.alpha=32", f"grpo.rollouts={updates}",
        f"grpo.prompts_per_rollout={PROMPTS}", f"grpo.num_generations={GENERATIONS}",
        f"grpo.max_new_tokens={NEW_TOKENS}", f"grpo.kl_coef={BETA}", "grpo.eval_prompts=0", "grpo.samples_every=0",
        f"train.batch_size={PROMPTS * GENERATIONS}", f"train.lr={LR}", f"train.precision={precision}",
        "train.save_every=0", "data.eval=null", *(["grpo.loss=gspo"] if loss == "gspo" else []),
    ])
    train(Timed(cfg), Path(workdir) / "run")
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "loss": loss}


def _exact_match(prompts, completions, answer, **kwargs):
    from alignloop.rewards.rules import BUILTIN_RULES

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return BUILTIN_RULES["exact_match"]()(prompts, texts, answer=answer)


def trl_side(updates: int, workdir: str, precision: str = "bf16", loss: str = "grpo") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignloop.data import load_records
    from alignloop.models import load_tokenizer, resolve_model

    torch.manual_seed(0)
    records = list(load_records("bundled:arith_train.jsonl", "prompt"))[: PROMPTS * updates]
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in records])
    clock = StepClock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    gspo = dict(importance_sampling_level="sequence", loss_type="grpo", epsilon=3e-4, epsilon_high=4e-4)
    args = GRPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
        gradient_accumulation_steps=1, num_generations=GENERATIONS, max_completion_length=NEW_TOKENS,
        temperature=1.0, beta=BETA, learning_rate=LR, max_steps=updates, num_iterations=1, report_to=[],
        save_strategy="no", bf16=precision == "bf16", use_cpu=True, seed=0, logging_steps=1, shuffle_dataset=False,
        **(gspo if loss == "gspo" else {"loss_type": "dapo"}),
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(resolve_model(MODEL)), dtype=torch.float32),
        reward_funcs=_exact_match, args=args, train_dataset=data,
        processing_class=load_tokenizer(MODEL, padding_side="left"), callbacks=[Tick()],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "loss": loss, "version": __import__("trl").__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--loss", choices=("grpo", "gspo"), default="grpo",
                   help="grpo: token-level ratios (default); gspo: sequence-level ratios on both sides")
    add_common_flags(p, trl_venv=TRL19_VENV, precision="bf16",
                     precision_help="both sides: bf16 autocast (both tools' default) or fp32")
    args = p.parse_args(argv)
    check_common_flags(p, args)
    trl_python = ensure_venv(args.trl_venv, TRL_REQUIREMENT)
    workload = f"{PROMPTS} prompts × {GENERATIONS} generations × {NEW_TOKENS} tokens, LoRA, β={BETA}, {args.loss}"
    return compare_sides(__file__, args.loss, args, trl_python,
                         {"updates": args.updates, "precision": args.precision, "loss": args.loss}, workload)


if __name__ == "__main__":
    main()
