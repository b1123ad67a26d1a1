"""How close a training step comes to the machine's matmul peak: FLOP counts, a GEMM microbenchmark, a profile.

``benchmarks/sft.py`` uses these to report achieved FLOP/s against the peak measured in the same run:

* ``linear_weights(model)``: the model's matmul weights, trunk and LM head apart (counted from the real model
  built on the meta device, so any architecture works).
* ``step_flops(...)``: the FLOPs of one training step. *Hardware* FLOPs count what runs: forward, the
  recomputed forward when gradient checkpointing is on, backward (2× forward), the LM head only on the
  scored tokens (alignloop's chunked head recomputes its logits in backward), and dense attention over the
  whole row length. *Model* FLOPs are the usual 6·N per token without recompute (MFU's convention).
* ``gemm_peak(...)``: FLOP/s of the step's own GEMMs at the model's shapes — forward ``X Wᵀ``, input
  gradient ``dY W`` and weight gradient ``dYᵀ X`` of every linear layer, at the step's row count, in the
  step's dtype — run back to back, plus one large square GEMM for reference.
* ``op_class(name)`` and ``profile_by_class(profiler)``: a torch.profiler table grouped by op class.

    python benchmarks/utilisation.py --precision bf16    # the GEMM peak alone, as JSON
    python benchmarks/utilisation.py --profile-sft       # and 2 profiled steps of sft.py's alignloop side
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Op classes of a profile, tried in order; the first whose fragment is in the op name wins.
OP_CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("scaled_dot_product", "scaleddotproduct", "flash_attention", "_efficient_attention")),
    ("optimizer", ("adam", "optimizer", "_foreach")),
    ("matmul", ("mm", "linear", "matmul", "mkldnn", "onednn")),
    ("copy / cast / layout", ("copy", "_to_copy", "clone", "contiguous", "cat", "stack", "transpose", "view",
                              "reshape", "permute", "expand", "slice", "select", "index", "gather", "scatter",
                              "fill", "zero", "empty", "_unsafe", "as_strided", "split", "chunk", "pad",
                              "masked", "squeeze", "detach", "alias", "resize", "ones")),
    ("elementwise / norm / activation", ("add", "sub", "mul", "div", "pow", "rsqrt", "sqrt", "mean", "sum",
                                         "silu", "sigmoid", "exp", "log", "neg", "where", "max", "min",
                                         "embedding", "norm", "cos", "sin", "clamp", "threshold", "gelu")),
]


# autograd nodes (MmBackward0) and custom autograd functions (_LinearLogSoftmax): their own Python-side time
_AUTOGRAD_NODE = re.compile(r"_?[A-Z][A-Za-z0-9]*")


def op_class(name: str) -> str:
    """The class of a profiler op name (``aten::addmm`` → ``matmul``); ``other`` when nothing matches."""
    if name.startswith("autograd::") or _AUTOGRAD_NODE.fullmatch(name):
        return "autograd engine"  # the node's own time; the ATen ops it runs count under their classes
    short = name.split("::")[-1].lower()
    if name.startswith("aten::") and short.lstrip("_").startswith("softmax"):
        return "attention"  # the eager attention path's softmax (the chunked LM head uses logsumexp)
    if short in ("t", "to"):  # too short to match as fragments
        return "copy / cast / layout"
    for label, fragments in OP_CLASSES:
        if any(f in short for f in fragments):
            return label
    return "other"


def profile_by_class(events, wall_seconds: float) -> dict:
    """Self CPU time of a profile's ops summed per class, in seconds and as a share of ``wall_seconds``.

    ``events`` is ``profiler.key_averages()``. Self times of the calling thread's ops add up to the time
    spent inside ATen ops; the rest of the wall time (``outside ops``) is Python, autograd bookkeeping and
    the data pipeline.
    """
    seconds: dict[str, float] = defaultdict(float)
    top: dict[str, list] = defaultdict(list)
    for event in events:
        if event.key.startswith("ProfilerStep") or event.key.startswith("##"):
            continue
        cls = op_class(event.key)
        self_s = event.self_cpu_time_total / 1e6
        seconds[cls] += self_s
        top[cls].append((self_s, event.key))
    inside = sum(seconds.values())
    table = {cls: {"seconds": round(s, 3), "share": round(s / wall_seconds, 3),
                   "top_ops": [k for _, k in sorted(top[cls], reverse=True)[:3]]}
             for cls, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    table["outside ops"] = {"seconds": round(max(0.0, wall_seconds - inside), 3),
                            "share": round(max(0.0, wall_seconds - inside) / wall_seconds, 3), "top_ops": []}
    return table


def linear_weights(model_name_or_path: str) -> dict:
    """``{"trunk": [(out, in), ...], "head": (out, in) | None}``: every matmul weight of the model's layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    trunk = [tuple(m.weight.shape) for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m is not head]
    text = getattr(config, "text_config", config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {"trunk": trunk, "head": tuple(head.weight.shape) if head is not None else None,
            "layers": int(text.num_hidden_layers),
            "attention_width": int(text.num_attention_heads * head_dim)}


def step_flops(weights: dict, *, tokens: int, scored: int, rows_by_length_sq: int, checkpointing: bool) -> dict:
    """Hardware and model FLOPs of one training step (see the module docstring).

    ``tokens``: the real tokens fed to the trunk; ``scored``: the tokens whose log-probability the loss takes
    (the head runs on those only); ``rows_by_length_sq``: Σ rows·T² over the step's forwards (dense attention
    computes every row's T×T scores, padding and packing boundaries included).
    """
    n_trunk = sum(o * i for o, i in weights["trunk"])
    n_head = weights["head"][0] * weights["head"][1] if weights["head"] else 0
    # Q Kᵀ and P V: 2·T²·width each, per row and layer
    attention_forward = rows_by_length_sq * weights["layers"] * 4 * weights["attention_width"]
    trunk_forward = 2 * n_trunk * tokens + attention_forward
    head_forward = 2 * n_head * scored
    trunk_passes = 4 if checkpointing else 3  # forward (+ recompute) + backward (2×)
    hardware = trunk_passes * trunk_forward + 4 * head_forward  # the chunked head always recomputes
    model = 3 * (trunk_forward + head_forward)
    return {"hardware": hardware, "model": model, "trunk_params": n_trunk, "head_params": n_head}


def _gflops(flops: float, seconds: float) -> float:
    return float(f"{flops / seconds / 1e9:.4g}")


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def gemm_peak(trunk: list, head: tuple | None, *, rows: int, head_rows: int, precision: str,
              repeats: int = 3, square: int = 2048) -> dict:
    """FLOP/s of a step's GEMMs at the model's shapes (each distinct shape timed once, weighted by its count)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    counts: dict[tuple, int] = defaultdict(int)
    for shape in trunk:
        counts[(tuple(shape), rows)] += 1
    if head is not None:
        counts[(tuple(head), head_rows)] += 1
    flops = seconds = 0.0
    per_shape = []
    for ((out_f, in_f), m), count in counts.items():
        x = torch.randn(m, in_f, dtype=dtype)
        w = torch.randn(out_f, in_f, dtype=dtype)
        dy = torch.randn(m, out_f, dtype=dtype)
        taken = (_time(lambda: torch.nn.functional.linear(x, w), repeats)
                 + _time(lambda: dy @ w, repeats) + _time(lambda: dy.t() @ x, repeats))
        work = 3 * 2 * m * in_f * out_f
        flops += count * work
        seconds += count * taken
        per_shape.append({"shape": [m, in_f, out_f], "count": count, "gflops": _gflops(work, taken)})
    a = torch.randn(square, square, dtype=dtype)
    b = torch.randn(square, square, dtype=dtype)
    square_s = _time(lambda: a @ b, repeats)
    return {"precision": precision, "threads": torch.get_num_threads(),
            "model_shapes_gflops": _gflops(flops, seconds),
            f"square_{square}_gflops": _gflops(2 * square**3, square_s), "per_shape": per_shape}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=2048, help="GEMM rows: tokens per micro-batch")
    parser.add_argument("--head-rows", type=int, default=512, help="rows per LM-head chunk")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--profile-sft", action="store_true",
                        help="also profile 2 steps of benchmarks/sft.py's alignloop side (its defaults) by op class")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from alignloop.models import resolve_model

    weights = linear_weights(str(resolve_model(args.model)))
    result = gemm_peak(weights["trunk"], weights["head"], rows=args.rows, head_rows=args.head_rows,
                       precision=args.precision)
    if args.profile_sft:
        import tempfile

        from common import run_isolated

        sft = Path(__file__).resolve().parent / "sft.py"
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as work:
            profiled = run_isolated(f"{sft}:run_alignloop", {
                "model": args.model, "data": "bundled:sft_demo_train.jsonl", "steps": 4, "warmup": 1, "batch": 8,
                "max_length": 256, "lr": 2e-5, "precision": args.precision, "packing": True, "out_dir": work,
                "profile_steps": 2}, threads=args.threads)
        result["profile"] = profiled["profile"]
        for cls, row in profiled["profile"]["by_class"].items():
            print(f"  {cls:>32}: {row['share']:6.1%} of profiled wall time  {', '.join(row['top_ops'])}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
