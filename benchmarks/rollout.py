"""Decode throughput of ``HFSampler`` against ``model.generate`` and against the machine's memory-bandwidth bound.

    python benchmarks/rollout.py [--batch-sizes 8,16,32,64] [--new-tokens 48] [--precision bf16|fp32]
                                 [--threads N] [--runs 3] [--levers] [--model DIR_OR_NAME]

Workload: ``B`` chat prompts (the 8 below, cycled) × ``--new-tokens`` new tokens, plain sampling (temperature 1, no
top-k / top-p), one batch of ``B`` rows, for each batch size. ``hf_generate`` is ``model.generate`` at the same
settings (under the same bf16 autocast with ``--precision bf16``); ``hfsampler`` is alignloop's sampler at its
defaults. With ``--levers`` the sampler also runs with each speed lever switched off (``static_cache=False``,
``share_prefix=False``, ``fused_sampling=False``), so every lever is measured against the defaults in the same run.
Tokens count up to and including each row's first EOS. ``--runs N`` repeats everything N times, alternating the
order of the contenders, and reports the median and the [min, max] spread of tokens/s (wall and per CPU-second of
this process) and of the per-run ratios to ``hf_generate``.

The bound. A memory copy benchmark in the same process measures the bandwidth (``copy``: bytes read + bytes
written per second, STREAM's convention, 512 MB buffers, far above the L3 cache). One decode step must at least
read every weight once (the bf16 copies under bf16 autocast, fp32 otherwise; the tied LM head counted once) plus
the KV cache of every running row up to its current length, so a run's decode phase takes at least
``sum over steps (weight bytes + KV bytes of that step) / bandwidth``; ``bound_tokens_per_second`` is the decode
tokens over that time, and ``fraction_of_bound`` is the sampler's measured decode-phase tokens/s (prefill
excluded, from ``HFSampler.last_stats``) over it. Because at batch 64 a 135M model also does ~17 GFLOP per step,
the script measures the matmul floor too: the time of the step's own matrix products (every linear layer and
the LM head at ``B`` rows, in the decode precision) run back to back, the arithmetic a step cannot avoid.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_flags, check_common_flags, spread  # noqa: E402

from alignloop.models import load_causal_lm, load_tokenizer  # noqa: E402
from alignloop.rollout import HFSampler, forward_logprobs  # noqa: E402
from alignloop.rollout.hf import left_pad  # noqa: E402

PROMPTS = [
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how photosynthesis works, step by step.",
    "Describe a busy market in a coastal town at sunrise.",
    "Write a letter to a friend about your favourite book.",
    "List ten ideas for a rainy weekend and explain each one.",
    "Tell me about the history of the bicycle.",
    "Write a poem about the sea and the moon.",
    "Give detailed advice for someone learning to cook.",
]


# --- the machine: memory bandwidth and the matmul floor ---------------------------------------------------
def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` GB/s of ``dst.copy_(src)`` (read + write bytes) and of ``src.sum()`` (read bytes)."""
    n = megabytes * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)  # fault the pages in
    copy = read = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        copy = min(copy, time.perf_counter() - started)
        started = time.perf_counter()
        src.sum()
        read = min(read, time.perf_counter() - started)
    return {"copy_gb_per_s": round(2 * n * 4 / copy / 1e9, 2), "read_gb_per_s": round(n * 4 / read / 1e9, 2)}


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every linear layer and the LM head, one entry per module (so repeated layers repeat)."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def matmul_floor_seconds(shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Seconds of one step's matrix products at ``rows`` rows in ``dtype``, best of ``repeats`` (distinct weights
    per module, so the weights come from memory as they do in a real step)."""
    weights = [torch.randn(out, inp).to(dtype) for inp, out in shapes]
    inputs = {inp: torch.randn(rows, inp).to(dtype) for inp, _ in shapes}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for (inp, _), weight in zip(shapes, weights):
                torch.nn.functional.linear(inputs[inp], weight)
            best = min(best, time.perf_counter() - started)
    return best


def decode_bytes(model: torch.nn.Module, precision: str) -> tuple[int, int]:
    """(bytes of weights one decode step reads, KV-cache bytes per cached token).

    Linear weights in the decode dtype (bf16 under bf16 autocast); other parameters (norms) as stored; the input
    embedding only when it is also the LM head (a lookup of B rows is negligible); each tensor counted once."""
    low = 2 if precision == "bf16" else 4
    head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    counted, total = set(), 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in counted or (param is embedding and param is not head):
                continue
            counted.add(id(param))
            size = low if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) else param.element_size()
            total += param.numel() * size
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * low
    return total, kv


def bound_seconds(prompt_lengths: list[int], response_lengths: list[int], weight_bytes: int, kv_bytes: int,
                  bandwidth: float) -> tuple[float, int]:
    """(least seconds of the decode phase at ``bandwidth`` B/s, decode tokens). Decode step ``s`` (1, 2, ...) runs
    the rows whose response is longer than ``s`` (the first token comes from the prefill), each reading its
    cache of ``prompt + s`` tokens."""
    steps = max(response_lengths) - 1
    total = 0.0
    for s in range(1, steps + 1):
        context = sum(p + s for p, r in zip(prompt_lengths, response_lengths) if r > s)
        total += weight_bytes + context * kv_bytes
    return total / bandwidth, sum(r - 1 for r in response_lengths)


# --- the contenders ---------------------------------------------------------------------------------------
def chat_ids(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return left_pad(rows, tokenizer.pad_token_id, torch.device("cpu"))


def hf_generate(model, tokenizer, prompts: list[str], new_tokens: int, seed: int, precision: str) -> dict:
    ids, mask = chat_ids(tokenizer, prompts)
    torch.manual_seed(seed)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    new = out[:, ids.shape[1]:]
    is_eos = new == tokenizer.eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # positions after the first EOS
    return {"tokens": int((~after_eos).sum())}


def sampler_run(sampler: HFSampler, prompts: list[str], new_tokens: int, seed: int) -> dict:
    rollout = sampler.generate(prompts, max_new_tokens=new_tokens, seed=seed)
    return {"tokens": int(rollout.response_mask.sum()), "rollout": rollout, **sampler.last_stats}


def timed(fn) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    result.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu)
    return result


def contenders(model, tokenizer, prompts: list[str], args) -> dict:
    rows = len(prompts)
    made = {"hf_generate": lambda seed, new=args.new_tokens: hf_generate(model, tokenizer, prompts, new, seed,
                                                                          args.precision)}
    variants = {"hfsampler": {}}
    if args.levers:
        variants.update({"hfsampler/dynamic_cache": {"static_cache": False},
                         "hfsampler/no_shared_prefix": {"share_prefix": False},
                         "hfsampler/plain_sampling": {"fused_sampling": False}})
    for name, kwargs in variants.items():
        sampler = HFSampler(model, tokenizer, batch_size=rows, dtype=args.precision, **kwargs)
        made[name] = lambda seed, s=sampler, new=args.new_tokens: sampler_run(s, prompts, new, seed)
    return made


def summarise(name: str, runs: list[dict], base: list[dict] | None, bound: dict | None) -> dict:
    out = {key: spread([r["tokens"] / r[unit] for r in runs]) for key, unit in
           (("tokens_per_second", "wall"), ("tokens_per_cpu_second", "cpu"))}
    out["tokens"] = spread([r["tokens"] for r in runs])["median"]
    if base is not None and name != "hf_generate":
        out["ratio_to_hf_generate"] = spread([(r["tokens"] / r["wall"]) / (b["tokens"] / b["wall"])
                                              for r, b in zip(runs, base)])
        out["cpu_ratio_to_hf_generate"] = spread([(r["tokens"] / r["cpu"]) / (b["tokens"] / b["cpu"])
                                                  for r, b in zip(runs, base)])
    if "decode_seconds" in runs[0] and bound is not None:
        decode = [r["decode_tokens"] / r["decode_seconds"] for r in runs]
        out["decode_tokens_per_second"] = spread(decode)
        out["fraction_of_bound"] = spread([d / b for d, b in zip(decode, bound["bound_tokens_per_second"])])
        out["fraction_of_matmul_floor"] = spread([d / b for d, b in zip(decode, bound["floor_tokens_per_second"])])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, trl_venv=None, precision_help="bf16 autocast (weights cast once per call) or fp32")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="rows decoded together (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--levers", action="store_true", help="also time the sampler with each lever switched")
    args = parser.parse_args()
    check_common_flags(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    model, tokenizer = load_causal_lm(args.model, dtype=torch.float32), load_tokenizer(args.model)
    model.eval()
    load_before = os.getloadavg()
    weight_bytes, kv_bytes = decode_bytes(model, args.precision)
    shapes, low = linear_shapes(model), torch.bfloat16 if args.precision == "bf16" else torch.float32
    print(f"model={args.model} precision={args.precision} threads={torch.get_num_threads()} "
          f"weights read per step {weight_bytes / 1e6:.1f} MB, KV {kv_bytes} B per cached token", flush=True)

    results: dict[str, dict] = {}
    machine: list[dict] = []
    for size in sizes:
        prompts = (PROMPTS * (size // len(PROMPTS) + 1))[:size]
        made = contenders(model, tokenizer, prompts, args)
        for fn in made.values():  # warm-up: allocations, lazy init
            fn(0, new=2)
        runs: dict[str, list[dict]] = {name: [] for name in made}
        bound: dict[str, list[float]] = {"bound_tokens_per_second": [], "floor_tokens_per_second": []}
        for run in range(args.runs):
            bandwidth = memory_bandwidth()
            floor = matmul_floor_seconds(shapes, size, low)
            machine.append({**bandwidth, "batch": size, f"matmul_floor_ms_at_{size}": round(floor * 1e3, 2)})
            order = list(made) if run % 2 == 0 else list(made)[::-1]
            for name in order:
                runs[name].append(timed(lambda: made[name](run + 1)))
            rollout = runs["hfsampler"][-1]["rollout"]
            prompt_lengths = rollout.prompt_mask.sum(1).tolist()
            lengths = rollout.response_lengths().tolist()
            seconds, tokens = bound_seconds(prompt_lengths, lengths, weight_bytes, kv_bytes,
                                            bandwidth["copy_gb_per_s"] * 1e9)
            bound["bound_tokens_per_second"].append(tokens / seconds)
            bound["floor_tokens_per_second"].append(tokens / (floor * (max(lengths) - 1)) if max(lengths) > 1 else 0)
            for name in made:
                if "rollout" in runs[name][-1]:
                    r = runs[name][-1]
                    r["decode_tokens"] = int((r.pop("rollout").response_lengths() - 1).clamp(min=0).sum())
        base = runs["hf_generate"]
        results[str(size)] = {
            "bound_tokens_per_second": spread(bound["bound_tokens_per_second"]),
            "matmul_floor_tokens_per_second": spread(bound["floor_tokens_per_second"]),
            **{name: summarise(name, r, base, bound) for name, r in runs.items()},
        }
    logprob_gap = gap_to_forward(model, tokenizer, args)
    load_after = os.getloadavg()
    bandwidth = {key: spread([m[key] for m in machine]) for key in ("copy_gb_per_s", "read_gb_per_s")}
    report(results, bandwidth, load_before, load_after, args)
    print(json.dumps({"benchmark": "rollout", "model": args.model, "precision": args.precision,
                      "threads": torch.get_num_threads(), "runs": args.runs, "new_tokens": args.new_tokens,
                      "statistic": "median over runs; spread = [min, max]", "memory_bandwidth": bandwidth,
                      "weight_bytes_per_step": weight_bytes, "kv_bytes_per_token": kv_bytes,
                      "load_average": {"before": load_before[0], "after": load_after[0]},
                      "logprob_gap_to_fp32_forward": logprob_gap, "batch": results}))


def gap_to_forward(model, tokenizer, args) -> dict:
    """The sampler's log-probs against one fresh fp32 forward pass (8 prompts)."""
    rollout = HFSampler(model, tokenizer, batch_size=8, dtype=args.precision).generate(
        PROMPTS, max_new_tokens=args.new_tokens, seed=0)
    with torch.no_grad():
        reference = forward_logprobs(model, rollout)
    gap = (reference - rollout.logprobs)[rollout.response_mask.bool()].abs()
    return {"mean": round(float(gap.mean()), 5), "max": round(float(gap.max()), 5)}


def report(results: dict, bandwidth: dict, load_before, load_after, args) -> None:
    bw = bandwidth["copy_gb_per_s"]
    print(f"memory copy bandwidth: median {bw['median']} GB/s [{bw['min']}-{bw['max']}]; "
          f"read {bandwidth['read_gb_per_s']['median']} GB/s")
    print(f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after (2 cores: > 2 means a shared CPU)")
    head = f"{'batch':>5} {'sampler':<26}{'tok/s':>9}{'tok/CPU-s':>11}{'vs generate':>13}{'decode tok/s':>14}" \
           f"{'bound':>8}{'of bound':>10}{'of matmul':>11}"
    print(head)
    for size, entry in results.items():
        for name, s in entry.items():
            if not isinstance(s, dict) or "tokens_per_second" not in s:
                continue
            ratio = s.get("ratio_to_hf_generate", {}).get("median")
            decode = s.get("decode_tokens_per_second", {}).get("median")
            frac = s.get("fraction_of_bound", {}).get("median")
            floor = s.get("fraction_of_matmul_floor", {}).get("median")
            print(f"{size:>5} {name:<26}{s['tokens_per_second']['median']:>9.1f}"
                  f"{s['tokens_per_cpu_second']['median']:>11.1f}{_fmt(ratio, 'x'):>13}{_fmt(decode, ''):>14}"
                  f"{entry['bound_tokens_per_second']['median']:>8.0f}{_fmt(frac, '%'):>10}{_fmt(floor, '%'):>11}")
    sys.stdout.flush()


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}{unit}" if unit else f"{value:.1f}"


if __name__ == "__main__":
    main()
