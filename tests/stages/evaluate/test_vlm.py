"""`alignloop eval` with a tiny random VLM on image prompts: greedy exact match against the records' answers
(the held-out check), sampling with each prompt's own image, KL forwards with the images, clear errors."""

from __future__ import annotations

import json

import pytest

from alignloop.errors import AlignloopError, ConfigError
from alignloop.models.loading import load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.pipeline.runner import config_from_dict
from alignloop.rewards.rules import BUILTIN_RULES, exact_match
from alignloop.rollout import HFSampler, TokenizedPrompt
from alignloop.stages.evaluate.sampling import load_policy
from alignloop.stages.evaluate.stage import EvalConfig, evaluate

QUESTION = "<image>What colour is the shape? Answer with one word."
PROMPTS = 4


def same_text(prompts, completions, answer, images):
    """Test proxy: 1.0 when the completion is the record's answer (whitespace-normalised); ``images`` must be one
    image path per row (the record field passed through)."""
    assert all(len(entries) == 1 and entries[0].endswith(".png") for entries in images)
    return [float(" ".join(c.split()) == " ".join(str(a).split())) for c, a in zip(completions, answer)]


def write_prompts(folder, shapes_data, answers):
    if not (folder / "images").exists():
        (folder / "images").symlink_to(shapes_data / "images")
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": QUESTION}],
                                        "images": [f"images/train-{i:05d}.png"], "answer": answer}) + "\n"
                            for i, answer in enumerate(answers)))
    return path


def sample_by_hand(model_dir, shapes_data, image_numbers, **kwargs):
    """What eval's single generate call should produce, rebuilt outside the stage."""
    vision = VisionTokenizer(load_vision_processor(model_dir))
    messages = [{"role": "user", "content": QUESTION}]
    prompts = [TokenizedPrompt(*vision.prompt(messages, [str(shapes_data / "images" / f"train-{i:05d}.png")], 128))
               for i in image_numbers]
    return HFSampler(load_policy(model_dir), vision.tokenizer, batch_size=8).generate(prompts, **kwargs).responses


def eval_config(model, prompts, **eval_opts):
    options = {"max_new_tokens": 6, "batch_size": 8, "n_boot": 50, "show_samples": 2, **eval_opts}
    return config_from_dict(EvalConfig, {"model": str(model), "data": {"eval": str(prompts), "max_length": 128},
                                         "reward": "tests.stages.evaluate.test_vlm:same_text", "eval": options}, "t")


def test_greedy_exact_match_on_image_prompts(tmp_path, tiny_vlm_dir, shapes_data):
    greedy = sample_by_hand(tiny_vlm_dir, shapes_data, range(PROMPTS), n=1, max_new_tokens=6, temperature=0.0)
    answers = [greedy[0].strip(), greedy[1].strip(), "3", "purple"]  # the first two are what the model says
    prompts = write_prompts(tmp_path, shapes_data, answers)
    report = evaluate(eval_config(tiny_vlm_dir, prompts, gold="rule:exact_match", temperature=0), tmp_path / "eval")
    entry = report["policies"]["reference"]
    assert report["gold_scorer"] == "rule:exact_match" and report["sampling"]["temperature"] == 0
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["completion"] for s in samples] == greedy
    assert [s["gold"] for s in samples] == exact_match([""] * PROMPTS, greedy, answer=answers)
    assert entry["gold_reward_mean"] == pytest.approx(sum(s["gold"] for s in samples) / PROMPTS)
    assert [s["proxy"] for s in samples] == [1.0, 1.0, 0.0, 0.0]  # each row scored against its own record
    assert entry["proxy_reward_mean"] == 0.5 and entry["n_samples"] == PROMPTS
    assert all(s["prompt"] == QUESTION for s in samples)  # the report shows the prompt text, as for text models


def test_a_rule_gold_scores_each_sample_against_its_own_record(tmp_path, tiny_vlm_dir, shapes_data, monkeypatch):
    """A ``rule:<name>`` gold is handed the records' fields row by row (exact match itself stays 0 here: the random
    model writes no number, so a rule that compares the whole text shows the alignment)."""
    monkeypatch.setitem(BUILTIN_RULES, "test_same_text", lambda: same_text)
    greedy = sample_by_hand(tiny_vlm_dir, shapes_data, range(PROMPTS), n=1, max_new_tokens=6, temperature=0.0)
    prompts = write_prompts(tmp_path, shapes_data, ["3", greedy[1], "purple", greedy[3]])
    report = evaluate(eval_config(tiny_vlm_dir, prompts, gold="rule:test_same_text", temperature=0), tmp_path / "eval")
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["gold"] for s in samples] == [0.0, 1.0, 0.0, 1.0]
    assert report["policies"]["reference"]["gold_reward_mean"] == 0.5
    missing = tmp_path / "missing"
    missing.mkdir()
    prompts = write_prompts(missing, shapes_data, ["3", None])
    with pytest.raises(AlignloopError, match="exact_match: prompt record 1 has no 'answer'"):
        evaluate(eval_config(tiny_vlm_dir, prompts, gold="rule:exact_match", temperature=0), missing / "eval")


def test_sampled_eval_uses_each_prompts_own_image_and_its_kl_forwards_see_images(tmp_path, tiny_vlm_dir, shapes_data):
    prompts = write_prompts(tmp_path, shapes_data, ["red"] * PROMPTS)
    cfg = eval_config(tiny_vlm_dir, prompts, samples_per_prompt=2, policies={"same": str(tiny_vlm_dir)}, seed=0)
    report = evaluate(cfg, tmp_path / "eval")
    parts = tmp_path / "eval" / "parts"
    reference = [json.loads(line) for line in (parts / "reference.jsonl").read_text().splitlines()]
    kwargs = dict(n=2, max_new_tokens=6, temperature=1.0, seed=0)
    own = sample_by_hand(tiny_vlm_dir, shapes_data, range(PROMPTS), **kwargs)
    assert [r["completion"] for r in reference] == own
    assert own != sample_by_hand(tiny_vlm_dir, shapes_data, [1, 2, 3, 0], **kwargs)  # the image matters
    same = [json.loads(line) for line in (parts / "same.jsonl").read_text().splitlines()]
    assert all(r["logp"] == r["ref_logp"] and r["logp"] < 0 for r in same)  # same weights, same image forwards
    assert report["policies"]["same"]["kl_to_ref"] == 0.0


def test_image_prompts_with_a_text_model_are_a_clear_error(tmp_path, shapes_data):
    prompts = write_prompts(tmp_path, shapes_data, ["red"])
    with pytest.raises(ConfigError, match="prompt records hold images but model 'tiny-llama' is not a vision"):
        evaluate(eval_config("tiny-llama", prompts), tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_greedy_is_for_one_model_alone():
    config_from_dict(EvalConfig, {"eval": {"temperature": 0}}, "cfg.yaml")
    for extra in ({"best_of_n": [2]}, {"policies": {"x": "somewhere"}}, {"samples_per_prompt": 2}):
        with pytest.raises(ConfigError, match=r"eval: temperature: 0 \(greedy\) evaluates `model` alone"):
            config_from_dict(EvalConfig, {"eval": {"temperature": 0, **extra}}, "cfg.yaml")
