"""The synthetic shapes task (alignloop.data.shapes_task): determinism, file formats and answers checked on pixels."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignloop.data.shapes_task import COLOURS, chance_accuracy, draw_example, generate_shapes_task, main

BUNDLED = Path(__file__).resolve().parents[2] / "alignloop" / "resources" / "data" / "vlm_shapes"
FILES = ("sft.jsonl", "prompts.jsonl", "pairs.jsonl", "heldout.jsonl", "rl-prompts.jsonl", "rl-pairs.jsonl",
         "test.jsonl")
PROMPT_FILES = ("prompts.jsonl", "heldout.jsonl", "rl-prompts.jsonl", "test.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.size == (128, 128) and image.mode == "RGB"
        return np.asarray(image)


def colour_pixel_counts(pixels: np.ndarray) -> Counter:
    """Non-white pixels per colour name; every non-white pixel must be exactly one of COLOURS."""
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    rgbs, ns = np.unique(pixels[(pixels != 255).any(axis=2)], axis=0, return_counts=True)
    counts: Counter = Counter()
    for rgb, n in zip(map(tuple, rgbs.tolist()), ns.tolist()):
        assert rgb in by_rgb, f"unexpected pixel colour {rgb}"
        counts[by_rgb[rgb]] += n
    return counts


def components(pixels: np.ndarray) -> int:
    """Connected (8-neighbour) regions of non-white pixels, by flood fill."""
    todo = set(map(tuple, np.argwhere((pixels != 255).any(axis=2)).tolist()))
    n = 0
    while todo:
        n += 1
        stack = [todo.pop()]
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (y + dy, x + dx) in todo:
                        todo.remove((y + dy, x + dx))
                        stack.append((y + dy, x + dx))
    return n


def question_of(record: dict) -> str:
    turns = record["prompt"] if "prompt" in record else record["messages"]
    content = turns[0]["content"]
    assert content.startswith("<image>")
    return content[len("<image>"):]


def answer_space(record: dict) -> list[str]:
    task = record["task"]
    if task == "count":
        return ["1", "2", "3", "4"]
    if task == "colour":
        return list(COLOURS)
    assert task == "compare"
    question = question_of(record)
    return [c for c in COLOURS if f"the {c} one" in question]


def check_answer_on_pixels(record: dict, folder: Path) -> None:
    pixels = load_rgb(folder / record["images"][0])
    counts = colour_pixel_counts(pixels)
    answer = record["answer"]
    if record["task"] == "count":
        assert components(pixels) == int(answer)
    elif record["task"] == "colour":
        assert components(pixels) == 1
        assert counts.most_common(1)[0][0] == answer
        assert np.array_equal(pixels[(pixels != 255).any(axis=2)][0], COLOURS[answer])
    else:
        assert components(pixels) == 2 and set(counts) == set(answer_space(record))
        (big, n_big), (_, n_small) = counts.most_common(2)
        assert big == answer and n_big > 1.2 * n_small


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    assert generate_shapes_task(out, n_train=12, n_heldout=6, n_rl=9, n_test=15, seed=3) == {
        "sft.jsonl": 12, "prompts.jsonl": 12, "pairs.jsonl": 12, "heldout.jsonl": 6,
        "rl-prompts.jsonl": 9, "rl-pairs.jsonl": 9, "test.jsonl": 15}
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_regeneration_is_byte_identical(small, tmp_path):
    generate_shapes_task(tmp_path, n_train=12, n_heldout=6, n_rl=9, n_test=15, seed=3)
    assert snapshot(tmp_path) == snapshot(small)
    assert len(list((tmp_path / "images").glob("*.png"))) == 42
    other = tmp_path / "other"
    generate_shapes_task(other, n_train=12, n_heldout=6, n_rl=9, n_test=15, seed=4)
    assert (other / "prompts.jsonl").read_bytes() != (small / "prompts.jsonl").read_bytes()


def test_record_formats_and_answer_spaces(small):
    sft, prompts, pairs, heldout, rl_prompts, rl_pairs, test = (read_jsonl(small / name) for name in FILES)
    assert [list(r) for r in sft[:1]] == [["messages", "images", "task"]]
    assert {tuple(r) for r in prompts + heldout + rl_prompts + test} == {("prompt", "images", "answer", "task")}
    assert [r["task"] for r in test] == ["count", "colour", "compare"] * 5
    assert [r["images"] for r in test] == [[f"images/test-{i:05d}.png"] for i in range(15)]
    assert {tuple(r) for r in pairs + rl_pairs} == {("prompt", "chosen", "rejected", "images", "task")}
    assert [r["task"] for r in rl_prompts] == ["count", "colour", "compare"] * 3
    for p, q in zip(rl_prompts, rl_pairs):
        assert p["images"] == q["images"] == [f"images/rl-{rl_prompts.index(p):05d}.png"]
        assert q["chosen"][0] == {"role": "assistant", "content": p["answer"]} and q["prompt"] == p["prompt"]
        assert q["rejected"][0]["content"] != p["answer"] and q["rejected"][0]["content"] in answer_space(p)
    assert [r["task"] for r in prompts] == ["count", "colour", "compare"] * 4
    assert [r["task"] for r in heldout] == ["count", "colour", "compare"] * 2
    for s, p, q in zip(sft, prompts, pairs):
        assert s["images"] == p["images"] == q["images"] == [f"images/train-{prompts.index(p):05d}.png"]
        assert s["messages"][0] == p["prompt"][0] == q["prompt"][0] and s["messages"][0]["role"] == "user"
        assert s["messages"][1] == q["chosen"][0] == {"role": "assistant", "content": p["answer"]}
        assert q["rejected"][0]["role"] == "assistant" and q["rejected"][0]["content"] != p["answer"]
        assert q["rejected"][0]["content"] in answer_space(p)
    for record in prompts + heldout + rl_prompts + test:
        space = answer_space(record)
        assert record["answer"] in space
        assert len(space) == {"count": 4, "colour": 6, "compare": 2}[record["task"]]
    assert all(r["images"][0].startswith("images/heldout-") for r in heldout)


def test_answers_hold_on_the_pixels(small):
    for name in PROMPT_FILES:
        for record in read_jsonl(small / name):
            check_answer_on_pixels(record, small)


def test_no_image_is_in_two_splits(small):
    train, heldout, rl, test = ({load_rgb(small / r["images"][0]).tobytes() for r in read_jsonl(small / name)}
                                for name in PROMPT_FILES)
    assert len(train) == 12 and len(heldout) == 6 and len(rl) == 9 and len(test) == 15
    splits = [train, heldout, rl, test]
    assert all(not a & b for i, a in enumerate(splits) for b in splits[i + 1:])


def test_adding_later_splits_left_earlier_files_unchanged(small, tmp_path):
    generate_shapes_task(tmp_path, n_train=12, n_heldout=6, n_rl=0, n_test=0, seed=3)
    for name in ("sft.jsonl", "prompts.jsonl", "pairs.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes(), name
    generate_shapes_task(tmp_path, n_train=12, n_heldout=6, n_rl=9, n_test=0, seed=3)
    for name in ("rl-prompts.jsonl", "rl-pairs.jsonl"):
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes(), name


def test_draw_example_kinds():
    rng = random.Random(0)
    for kind in ("count", "colour", "compare"):
        image, question, answer = draw_example(kind, rng)
        assert image.size == (128, 128) and image.mode == "RGB" and question and answer
    with pytest.raises(ValueError):
        draw_example("shape", rng)


def test_chance_accuracy():
    records = [{"task": "count"}, {"task": "colour"}, {"task": "compare"}]
    assert chance_accuracy(records) == pytest.approx((1 / 4 + 1 / 6 + 1 / 2) / 3)
    with pytest.raises(ValueError):
        chance_accuracy([])


def test_main_writes_the_files(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "3", "--heldout", "3", "--rl", "3", "--test", "6",
                 "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sft.jsonl": 3, "prompts.jsonl": 3, "pairs.jsonl": 3,
                                                   "heldout.jsonl": 3, "rl-prompts.jsonl": 3, "rl-pairs.jsonl": 3,
                                                   "test.jsonl": 6}
    assert all((tmp_path / name).is_file() for name in FILES)


def test_bundled_copy_matches_a_fresh_generation(tmp_path):
    """JSONL byte-identical; images compared decoded, since PNG bytes may change with Pillow's zlib build."""
    assert generate_shapes_task(tmp_path) == {"sft.jsonl": 600, "prompts.jsonl": 600, "pairs.jsonl": 600,
                                              "heldout.jsonl": 200, "rl-prompts.jsonl": 1200, "rl-pairs.jsonl": 1200,
                                              "test.jsonl": 800}
    for name in FILES:
        assert (BUNDLED / name).read_bytes() == (tmp_path / name).read_bytes(), name
    fresh = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert sorted(p.name for p in (BUNDLED / "images").iterdir()) == fresh
    for name in fresh:
        assert np.array_equal(load_rgb(BUNDLED / "images" / name), load_rgb(tmp_path / "images" / name)), name
    for name in PROMPT_FILES:
        for record in read_jsonl(BUNDLED / name):
            check_answer_on_pixels(record, BUNDLED)
