"""PPO updates/s and peak memory: alignloop vs TRL 1.9.0's ``trl.experimental.ppo.PPOTrainer``, in one run.

Workload (both sides): the bundled SmolLM2-135M-Instruct with LoRA (r 16, α 32, all linear layers) on the
policy, bf16 autocast (both tools' default; ``--precision fp32`` for full precision), 8 prompts from
bundled:prompts_train.jsonl per update, up to 48 new tokens at temperature 1, 1 PPO epoch, 1 mini-batch,
β = 0.05 (k1 in the reward), a separate reward model and a separate value model (both a fresh scalar head on
the SmolLM2 backbone). Differences that are part of each design: TRL trains its value model fully (it never
puts LoRA on it) and recomputes the old log-probs with a forward pass; alignloop gives the critic the same
LoRA as the policy and reuses the sampler's log-probs.

Throughput = updates per second over updates 2..N (update 1 is warm-up). Each side runs in its own
process (peak RSS of exactly that child via os.wait4).

    python benchmarks/ppo.py [--updates 4] [--precision bf16|fp32]   # last line: the JSON summary
    python benchmarks/ppo.py --runs 3                                 # median and min-max spread of 3 run pairs

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl19-venv in the clone, created on first
use with ``trl==1.9.0 --no-deps`` over the system site-packages), ``--threads``, ``--precision``, ``--runs N``.
"""

from __future__ import annotations

import argparse
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

MODEL = "smollm2-135m-instruct"
TRL_REQUIREMENT = ["trl==1.9.0", "--no-deps"]
PROMPTS, NEW_TOKENS, LR, BETA = 8, 48, 1e-5, 0.05


def _prompt_messages(n: int) -> list[list[dict]]:
    from alignloop.data import load_records

    return [r["prompt"] for r in list(load_records("bundled:prompts_train.jsonl", "prompt"))[:n]]


def alignloop_side(updates: int, workdir: str, precision: str = "bf16") -> dict:
    import torch

    from alignloop.config import load_config
    from alignloop.models import ScalarHeadModel, load_tokenizer
    from alignloop.train.loop import train
    from alignloop.stages.rl.ppo import PPOConfig, PPOStage

    torch.manual_seed(0)
    rm_dir = Path(workdir) / "rm"
    ScalarHeadModel.from_causal_lm(MODEL).save_pretrained(rm_dir, tokenizer=load_tokenizer(MODEL))
    clock = StepClock()

    class Timed(PPOStage):
        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            clock.tick()

    cfg = load_config(PPOConfig, None, [
        f"model={MODEL}", f"ppo.reward={rm_dir}", "lora.r=16", "lora.alpha=32", f"ppo.rollouts={updates}",
        f"ppo.prompts_per_rollout={PROMPTS}", f"ppo.max_new_tokens={NEW_TOKENS}", "ppo.epochs=1", f"ppo.kl_coef={BETA}",
        "ppo.eval_prompts=0", "ppo.samples_every=0", f"train.batch_size={PROMPTS}", f"train.lr={LR}",
        f"train.precision={precision}", "train.save_every=0", "data.eval=null",
    ])
    train(Timed(cfg), Path(workdir) / "run")
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision}


def trl_side(updates: int, workdir: str, precision: str = "bf16") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from alignloop.models import load_tokenizer, resolve_model

    torch.manual_seed(0)
    folder = str(resolve_model(MODEL))
    tok = load_tokenizer(MODEL)
    messages = _prompt_messages(PROMPTS * updates)
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m in messages]
    ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in ids]
    data = Dataset.from_dict({"input_ids": ids})
    clock = StepClock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    args = PPOConfig(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=PROMPTS, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=1, response_length=NEW_TOKENS, total_episodes=PROMPTS * updates,
        local_rollout_forward_batch_size=PROMPTS, temperature=1.0, stop_token="eos", kl_coef=BETA, learning_rate=LR,
        num_sample_generations=0, report_to=[], save_strategy="no", bf16=precision == "bf16", use_cpu=True, seed=0,
        logging_steps=1,
    )
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        ref_model=None, reward_model=AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
        train_dataset=data, eval_dataset=data, callbacks=[Tick()],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    return {"throughput": clock.throughput(1.0), "cpu_throughput": clock.cpu_throughput(1.0), "updates": updates,
            "precision": precision, "version": __import__("trl").__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=4)
    add_common_flags(p, trl_venv=TRL19_VENV, precision="bf16",
                     precision_help="both sides: bf16 autocast (both tools' default) or fp32")
    args = p.parse_args(argv)
    check_common_flags(p, args)
    trl_python = ensure_venv(args.trl_venv, TRL_REQUIREMENT)
    workload = f"{PROMPTS} prompts × {NEW_TOKENS} tokens, 1 PPO epoch, LoRA policy, RM + value model"
    return compare_sides(__file__, "ppo", args, trl_python, {"updates": args.updates, "precision": args.precision},
                         workload, trl_env={"TRL_EXPERIMENTAL_SILENCE": "1"})


if __name__ == "__main__":
    main()
