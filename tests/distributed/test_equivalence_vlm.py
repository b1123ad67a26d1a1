"""Vision-language stages on 2 processes (gloo, CPU, real launches) train the same weights as on 1.

As tests/distributed/test_equivalence.py, on the tiny random VLM (tests/conftest.py ``tiny_vlm_dir``) and the
bundled image task: SFT through ``accelerate launch`` with the shipped CPU config, GRPO through torchrun. Each
rank holds only its own rows' images, so a wrong image-to-row mapping or an unsynchronised connector gradient
moves the weights far beyond the tolerance.
"""

from __future__ import annotations

import pytest

from tests.distributed.test_equivalence import train_one_and_two_processes

COMMON = ["train.precision=fp32", "train.lr=1e-3", "train.lr_schedule=constant", "train.warmup_steps=0",
          "train.save_every=0", "train.eval_every=0", "data.max_length=96", "data.eval=null", "data.eval_fraction=0",
          "lora.r=4", "lora.alpha=8"]


def data_files(tmp_path, shapes_data) -> dict[str, str]:
    (tmp_path / "images").symlink_to(shapes_data / "images")
    out = {}
    for name in ("sft", "prompts"):
        lines = (shapes_data / f"{name}.jsonl").read_text().splitlines()[:8]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        out[name] = str(tmp_path / f"{name}.jsonl")
    return out


def cases():
    sft = (["train.max_steps=3", "train.batch_size=4", "data.train={sft}"], 2)
    grpo = (["data.train={prompts}", "grpo.reward=rule:exact_match", "grpo.rollouts=2", "grpo.prompts_per_rollout=4",
             "grpo.num_generations=2", "grpo.max_new_tokens=4", "grpo.top_k=1", "grpo.eval_prompts=0",
             "grpo.samples_every=0", "grpo.entropy_coef=1.0", "train.batch_size=8"], 4)
    return [pytest.param("sft", *sft, marks=pytest.mark.slow), pytest.param("grpo", *grpo, marks=pytest.mark.slow)]


@pytest.mark.parametrize("stage,extra,micro", cases())
def test_vlm_stage_two_processes_match_one(tmp_path, tiny_vlm_dir, shapes_data, stage, extra, micro):
    files = data_files(tmp_path, shapes_data)
    overrides = [f"model={tiny_vlm_dir}", *COMMON, *(o.format(**files) for o in extra)]
    one, _ = train_one_and_two_processes(stage, overrides, micro, tmp_path)
    assert any("connector" in k for k in one)  # the image-to-text connector trained and was compared
