"""The utilisation figure's parts (benchmarks/utilisation.py): FLOP counts worked by hand, op classes, GEMM peak."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.benchmarks.test_common import _load

utilisation = _load("utilisation")

# two trunk matmuls (2×3 and 4×2 weights: 14 weights), a 5×2 head, one layer, attention width 2
WEIGHTS = {"trunk": [(2, 3), (4, 2)], "head": (5, 2), "layers": 1, "attention_width": 2}


def test_step_flops_by_hand():
    # 3 tokens in one row of length 3, 2 of them scored.
    # attention forward: Σ rows·T² · layers · 4 · width = 9 · 1 · 4 · 2 = 72
    # trunk forward: 2 · 14 · 3 + 72 = 156; head forward: 2 · 10 · 2 = 40
    got = utilisation.step_flops(WEIGHTS, tokens=3, scored=2, rows_by_length_sq=9, checkpointing=True)
    assert got["trunk_params"] == 14 and got["head_params"] == 10
    assert got["hardware"] == 4 * 156 + 4 * 40  # forward, recompute, backward 2×; the head always recomputes
    assert got["model"] == 3 * (156 + 40)  # 6·N per token, no recompute
    plain = utilisation.step_flops(WEIGHTS, tokens=3, scored=2, rows_by_length_sq=9, checkpointing=False)
    assert plain["hardware"] == 3 * 156 + 4 * 40
    assert plain["model"] == got["model"]


@pytest.mark.parametrize("name, cls", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_fused_adamw_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
    ("aten::copy_", "copy / cast / layout"), ("aten::to", "copy / cast / layout"),
    ("aten::t", "copy / cast / layout"), ("aten::transpose", "copy / cast / layout"),
    ("aten::mul", "elementwise / norm / activation"), ("aten::rsqrt", "elementwise / norm / activation"),
    ("aten::silu_backward", "elementwise / norm / activation"),
    ("autograd::engine::evaluate_function: MmBackward0", "autograd engine"),
    ("aten::_softmax", "attention"), ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    # autograd nodes' own time (the ATen ops they run count under their own classes)
    ("_LinearLogSoftmaxBackward", "autograd engine"), ("MmBackward0", "autograd engine"),
    ("_LinearLogSoftmax", "autograd engine"),
    ("ScaledDotProductFlashAttentionForCpuBackward0", "autograd engine"),
    ("aten::arange", "other"),
])
def test_op_classes(name, cls):
    assert utilisation.op_class(name) == cls


def test_profile_by_class_sums_self_time_and_the_rest_is_outside_ops():
    events = [SimpleNamespace(key="aten::mm", self_cpu_time_total=600_000),
              SimpleNamespace(key="aten::addmm", self_cpu_time_total=200_000),
              SimpleNamespace(key="aten::mul", self_cpu_time_total=100_000),
              SimpleNamespace(key="ProfilerStep#1", self_cpu_time_total=5_000_000)]
    table = utilisation.profile_by_class(events, wall_seconds=2.0)
    assert table["matmul"]["seconds"] == pytest.approx(0.8) and table["matmul"]["share"] == pytest.approx(0.4)
    assert table["matmul"]["top_ops"] == ["aten::mm", "aten::addmm"]
    assert table["elementwise / norm / activation"]["seconds"] == pytest.approx(0.1)
    assert table["outside ops"]["seconds"] == pytest.approx(1.1)
    assert list(table)[0] == "matmul"


def test_gemm_peak_counts_each_shape_and_reports_positive_rates():
    got = utilisation.gemm_peak([[8, 16], [8, 16], [16, 8]], [32, 8], rows=4, head_rows=2, precision="fp32",
                                repeats=1, square=16)
    shapes = {tuple(r["shape"]): r["count"] for r in got["per_shape"]}
    assert shapes == {(4, 16, 8): 2, (4, 8, 16): 1, (2, 8, 32): 1}
    assert got["model_shapes_gflops"] > 0 and got["square_16_gflops"] > 0
