"""Launch commands, the sampler-backend choice and the vLLM guard on a machine without a GPU."""

from __future__ import annotations

import sys

import pytest
import torch

from alignloop.distributed import free_port, launch_command
from alignloop.distributed.samplers import build_sampler
from alignloop.errors import ConfigError


def test_torchrun_command_runs_the_alignloop_module():
    cmd = launch_command(["sft", "cfg.yaml", "--set", "train.max_steps=2"], nproc=2)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                   "-m", "alignloop", "sft", "cfg.yaml", "--set", "train.max_steps=2"]
    assert launch_command(["x.py"], port=29555)[4:7] == ["2", "--master_port", "29555"]


def test_accelerate_command_with_a_config_file_and_a_script():
    cmd = launch_command(["train.py", "out"], nproc=4, launcher="accelerate", port=29556, config_file="ddp.yaml")
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4",
                   "--main_process_port", "29556", "--config_file", "ddp.yaml", "train.py", "out"]
    plain = launch_command(["dpo", "d.yaml"], nproc=2, launcher="accelerate", port=29557)
    assert plain[-5:] == (["--cpu"] if not torch.cuda.is_available() else ["--multi_gpu"]) + ["-m", "alignloop", "dpo", "d.yaml"]


def test_free_port_is_a_usable_port_number():
    assert 1024 <= free_port() <= 65535


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_vllm_backend_on_cpu_fails_with_one_clear_line():
    with pytest.raises(ConfigError) as err:
        build_sampler("vllm", "tiny-llama")
    assert str(err.value) == "rollout backend 'vllm' needs a CUDA GPU and none is available here; use backend 'hf'"


def test_unknown_backend_is_named():
    with pytest.raises(ConfigError) as err:
        build_sampler("sglang", "tiny-llama")
    assert str(err.value) == "rollout backend: expected one of hf, vllm, got 'sglang'"
