"""Online DPO updates/s and peak memory: alignloop (``dpo.online: true``) vs TRL 1.9.0's ``OnlineDPOTrainer``.

Workload (both sides): the bundled SmolLM2-135M-Instruct with LoRA (r 16, α 32, all linear layers), bf16
autocast (``--precision fp32`` for full precision), 8 open-ended prompts (bundled:prompts_train.jsonl) per update,
two samples each from the current policy at temperature 1, up to 48 new tokens; reward = warm words (the rule of
examples/dpo-online.yaml) + 0.5 × a length penalty past 40 characters (so nearly every answer gets a continuous
score and ties are rare), the higher-scored sample chosen; one sigmoid-DPO step (β 0.1, lr 1e-5) against the
frozen reference (the adapter switched off on both sides). TRL breaks a tie by taking the first sample;
alignloop skips tied pairs and reports how many (``tie_fraction``): fewer pairs in a step would flatter
alignloop, so read the ratio with it.

Throughput = updates per second over updates 2..N (update 1 is warm-up); one update = sampling 16 responses,
scoring them and one optimizer step. Each side runs in its own process.

    python benchmarks/online_dpo.py [--updates 6] [--precision bf16|fp32]  # last line: the JSON summary
    python benchmarks/online_dpo.py --runs 3                                # median and min-max spread of 3 pairs

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl19-venv in the clone, created on first
use with ``trl==1.9.0 --no-deps`` over the system site-packages), ``--threads``, ``--precision``, ``--runs N``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRL19_VENV, StepClock, add_common_flags, check_common_flags, ensure_venv  # noqa: E402
from side_by_side import compare_sides  # noqa: E402

MODEL = "smollm2-135m-instruct"
TRL_REQUIREMENT = ["trl==1.9.0", "--no-deps"]
DATA = "bundled:prompts_train.jsonl"
PROMPTS, NEW_TOKENS, LR, BETA, MAX_LENGTH = 8, 48, 1e-5, 0.1, 256
WARM_WORDS = r"(?i)\b(great|wonderful|love|lovely|happy|enjoy|enjoyed|amazing|delightful|fun)\b"
REWARD = [{"source": "rule:format", "weight": 1.0, "args": {"pattern": WARM_WORDS}},
          {"source": "rule:length_penalty", "weight": 0.5, "args": {"max_chars": 40}}]


def alignloop_side(updates: int, workdir: str, precision: str = "bf16") -> dict:
    import torch

    from alignloop.config import load_config
    from alignloop.stages.dpo.online import OnlineDPOStage
    from alignloop.stages.dpo.stage import DPOConfig
    from alignloop.train.loop import train

    torch.manual_seed(0)
    clock = StepClock()
    ties: list[float] = []

    class Timed(OnlineDPOStage):
        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            ties.append(float(metrics.get("objective/tie_fraction", 0.0)))
            clock.tick()

    cfg = load_config(DPOConfig, None, [
        f"model={MODEL}", f"data.train={DATA}", "data.eval=null", f"data.max_length={MAX_LENGTH}",
        "lora.r=16", "lora.alpha=32", f"train.max_steps={updates}", f"train.batch_size={PROMPTS}",
        f"train.lr={LR}", "train.lr_schedule=constant", f"train.precision={precision}", "train.save_every=0",
        "dpo.online=true", f"dpo.reward={json.dumps(REWARD)}", f"dpo.beta={BETA}", "dpo.loss_type=sigmoid",
        f"dpo.max_new_tokens={NEW_TOKENS}", "dpo.temperature=1.0", "dpo.gold=null", "dpo.eval_prompts=0",
    ])
    train(Timed(cfg), Path(workdir) / "run")
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "tie_fraction": round(sum(ties) / max(len(ties), 1), 3)}


def _reward(prompts, completions, **kwargs):
    from alignloop.rewards.rules import BUILTIN_RULES

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    warm = BUILTIN_RULES["format"](WARM_WORDS)(prompts, texts)
    short = BUILTIN_RULES["length_penalty"](max_chars=40)(prompts, texts)
    return [float(w) + 0.5 * float(s) for w, s in zip(warm, short)]


def trl_side(updates: int, workdir: str, precision: str = "bf16") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from alignloop.data import load_records
    from alignloop.models import load_tokenizer, resolve_model

    torch.manual_seed(0)
    records = list(load_records(DATA, "prompt"))[: PROMPTS * updates]
    tokenizer = load_tokenizer(MODEL, padding_side="left")
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in records])  # the user turn, as messages
    clock = StepClock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    args = OnlineDPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=PROMPTS, gradient_accumulation_steps=1,
        max_new_tokens=NEW_TOKENS, max_length=MAX_LENGTH, temperature=1.0, beta=BETA, loss_type="sigmoid",
        learning_rate=LR, lr_scheduler_type="constant", max_steps=updates, report_to=[], save_strategy="no",
        bf16=precision == "bf16", use_cpu=True, seed=0, logging_steps=1,
    )
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(resolve_model(MODEL)), dtype=torch.float32),
        reward_funcs=_reward, args=args, train_dataset=data,
        processing_class=tokenizer, callbacks=[Tick()],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "version": __import__("trl").__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=6)
    add_common_flags(p, trl_venv=TRL19_VENV, precision="bf16",
                     precision_help="both sides: bf16 autocast (both tools' default) or fp32")
    args = p.parse_args(argv)
    check_common_flags(p, args)
    trl_python = ensure_venv(args.trl_venv, TRL_REQUIREMENT)
    workload = f"{PROMPTS} prompts × 2 samples × {NEW_TOKENS} tokens, LoRA, sigmoid DPO β={BETA}"
    return compare_sides(__file__, "online_dpo", args, trl_python,
                         {"updates": args.updates, "precision": args.precision}, workload,
                         keys=("throughput", "cpu_throughput", "peak_rss_mb", "tie_fraction"))


if __name__ == "__main__":
    main()
