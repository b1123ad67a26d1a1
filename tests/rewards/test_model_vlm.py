"""A vision-language reward model as a reward source: the ``images`` keyword (record fields, as RL and best-of-N
pass them) reaches it, each row is scored with its own image, and a prompt with placeholders but no images is a
clear error. A text reward model takes the same keyword and ignores it."""

from __future__ import annotations

import base64

import pytest
import torch

from alignloop.errors import DataError
from alignloop.models import ScalarHeadModel, load_tokenizer
from alignloop.models.loading import load_vision_processor
from alignloop.rewards.build import build_reward
from alignloop.rewards.model import RewardModel
from alignloop.stages.rl.rewards import score_rollout

QUESTION = [{"role": "user", "content": "<image>What colour is the shape? Answer with one word."}]


@pytest.fixture(scope="module")
def vlm_rm_dir(tiny_vlm_dir, tmp_path_factory):
    """A random scalar head on the tiny VLM, saved like the RM stage saves it (with the processor)."""
    folder = tmp_path_factory.mktemp("vlm_rm") / "model"
    torch.manual_seed(0)
    ScalarHeadModel.from_causal_lm(tiny_vlm_dir).save_pretrained(folder, tokenizer=load_vision_processor(tiny_vlm_dir))
    return folder


@pytest.fixture(scope="module")
def pictures(shapes_data):
    return [str(shapes_data / "images" / f"train-{i:05d}.png") for i in (1, 4, 7)]


def test_record_fields_reach_the_vlm_reward_model_and_each_row_keeps_its_image(vlm_rm_dir, pictures):
    reward = build_reward(str(vlm_rm_dir))  # a reward-model directory, as in a config's `reward:`
    assert isinstance(reward, RewardModel) and reward.vision is not None
    responses = ["red", "red", "blue", "red", "blue"]
    rows = [[pictures[0]], [pictures[1]], [pictures[1]], [pictures[2]], [pictures[0]]]
    fields = {"images": rows, "task": ["colour"] * len(rows), "answer": ["x"] * len(rows)}
    # the RL path: prompts become their text, every record field is a keyword
    batch = score_rollout(reward, [QUESTION] * len(rows), responses, fields).scores
    alone = torch.cat([reward.score([QUESTION], [r], images=[im]) for r, im in zip(responses, rows)])
    assert torch.allclose(batch, alone, atol=1e-5), (batch, alone)
    order = [4, 2, 0, 3, 1]
    shuffled = reward.score([QUESTION] * len(rows), [responses[i] for i in order], images=[rows[i] for i in order])
    assert torch.allclose(shuffled, batch[order], atol=1e-5)
    # the same prompt and response with different images: different scores
    assert len({round(float(batch[i]), 6) for i in (0, 1, 3)}) == 3
    # a base64 entry is the same image as its file
    encoded = base64.b64encode(open(pictures[0], "rb").read()).decode()
    assert torch.allclose(reward.score([QUESTION], ["red"], images=[[encoded]]), batch[:1], atol=1e-5)
    # a single entry may be given without its list
    assert torch.allclose(reward.score([QUESTION], ["red"], images=[pictures[0]]), batch[:1], atol=1e-5)
    # the last call's scores are cached (score, then uncertainty): another image is another call
    assert torch.allclose(reward.score([QUESTION], ["red"], images=[[pictures[1]]]), batch[1:2], atol=1e-5)


def test_each_image_entry_is_prepared_once_and_reused(vlm_rm_dir, pictures):
    reward = RewardModel.load(vlm_rm_dir, device="cpu")
    _, first = reward.encode([QUESTION] * 2, ["red", "blue"], [[pictures[0]], [pictures[0]]])
    _, again = reward.encode([QUESTION], ["green"], [[pictures[0]]])
    assert first[0][0] is first[1][0] is again[0][0]


def test_missing_images_for_a_placeholder_prompt_is_a_clear_error(vlm_rm_dir, pictures):
    reward = RewardModel.load(vlm_rm_dir, device="cpu")
    with pytest.raises(DataError, match=r"vision-language model and row 1's prompt has <image> placeholders"):
        reward.score([QUESTION, QUESTION], ["red", "red"], images=[[pictures[0]], []])
    with pytest.raises(DataError, match="no images were given"):
        reward.score([QUESTION], ["red"])  # no `images` field at all
    # a text-only prompt needs none
    assert reward.score(["Say a colour."], ["red"]).shape == (1,)


def test_a_text_reward_model_ignores_images(tiny_model_dir, tmp_path, pictures):
    folder = tmp_path / "text_rm"
    torch.manual_seed(0)
    ScalarHeadModel.from_causal_lm(tiny_model_dir).save_pretrained(folder, tokenizer=load_tokenizer(tiny_model_dir))
    reward = RewardModel.load(folder, device="cpu")
    assert reward.vision is None
    prompts, responses = ["<image>What colour?", "<image>What colour?"], ["red", "blue"]
    with_images = reward.score(prompts, responses, images=[[pictures[0]], [pictures[1]]])
    assert torch.equal(with_images, reward.score(prompts, responses))
