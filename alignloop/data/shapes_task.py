"""A bundled synthetic image task for vision-language RLHF: coloured shapes on white, one-word checkable answers.

Three kinds of question, cycled so every split is balanced:

* ``count``: 1-4 shapes; "How many shapes are in the image?"; answer ``"1"`` .. ``"4"``.
* ``colour``: one shape; "What colour is the shape?"; answer a name from :data:`COLOURS`.
* ``compare``: two shapes of different colours, one at least 1.6x the other in side/diameter;
  "Which shape is larger, the <c1> one or the <c2> one?"; answer the larger one's colour.

Images are 128x128 RGB PNGs drawn with Pillow without anti-aliasing (every pixel is white or exactly one of
:data:`COLOURS`), shapes never overlap and lie fully inside the image. Generation is deterministic: the same
arguments write byte-identical files. ``python -m alignloop.data.shapes_task --out DIR`` writes a copy; the bundled
one is ``alignloop/resources/data/vlm_shapes``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
MARGIN = 4  # minimum gap between shapes and between a shape and the image border, in pixels
WHITE = (255, 255, 255)
COLOURS: OrderedDict[str, tuple[int, int, int]] = OrderedDict(
    [
        ("red", (220, 30, 30)),
        ("green", (30, 160, 50)),
        ("blue", (30, 70, 220)),
        ("yellow", (240, 200, 20)),
        ("purple", (140, 50, 180)),
        ("orange", (245, 130, 20)),
    ]
)
SHAPES = ("circle", "square", "triangle")
KINDS = ("count", "colour", "compare")
COUNT_ANSWERS = ("1", "2", "3", "4")
MIN_SIDE, MAX_SIDE = 16, 30  # count and colour shapes
COMPARE_SMALL = (12, 20)  # compare: the smaller shape's side; the larger is ceil(1.6 * small) .. COMPARE_MAX
COMPARE_RATIO, COMPARE_MAX = 1.6, 40
QUESTIONS = {
    "count": "How many shapes are in the image? Answer with one number.",
    "colour": "What colour is the shape? Answer with one word.",
    "compare": "Which shape is larger, the {c1} one or the {c2} one? Answer with one word.",
}
CHANCE = {"count": 1 / len(COUNT_ANSWERS), "colour": 1 / len(COLOURS), "compare": 1 / 2}
IMAGE_TOKEN = "<image>"


def _place(sizes: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """Top-left corners for square bounding boxes of ``sizes``: inside the image, ``MARGIN`` apart (rejection
    sampling; restarts the whole layout if one box finds no room)."""
    for _ in range(1000):
        boxes: list[tuple[int, int, int]] = []
        for side in sizes:
            for _ in range(200):
                x = rng.randint(MARGIN, SIZE - MARGIN - side)
                y = rng.randint(MARGIN, SIZE - MARGIN - side)
                if all(x + side + MARGIN <= bx or bx + bs + MARGIN <= x or y + side + MARGIN <= by
                       or by + bs + MARGIN <= y for bx, by, bs in boxes):
                    boxes.append((x, y, side))
                    break
            else:
                break
        if len(boxes) == len(sizes):
            return [(x, y) for x, y, _ in boxes]
    raise RuntimeError(f"could not place shapes of sizes {sizes}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, side: int, rgb: tuple[int, int, int]) -> None:
    box = (x, y, x + side - 1, y + side - 1)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x + (side - 1) / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _render(items: list[tuple[str, int, str]], rng: random.Random) -> Image.Image:
    """A white image with ``items`` (shape, side, colour name) drawn at random non-overlapping places."""
    image = Image.new("RGB", (SIZE, SIZE), WHITE)
    draw = ImageDraw.Draw(image)
    for (shape, side, colour), (x, y) in zip(items, _place([side for _, side, _ in items], rng)):
        _draw_shape(draw, shape, x, y, side, COLOURS[colour])
    return image


def _draw(kind: str, rng: random.Random) -> tuple[Image.Image, str, str, list[str]]:
    """(image, question, answer, this example's answer space)."""
    colours = list(COLOURS)
    if kind == "count":
        n = rng.randint(1, len(COUNT_ANSWERS))
        items = [(rng.choice(SHAPES), rng.randint(MIN_SIDE, MAX_SIDE), rng.choice(colours)) for _ in range(n)]
        return _render(items, rng), QUESTIONS["count"], str(n), list(COUNT_ANSWERS)
    if kind == "colour":
        colour = rng.choice(colours)
        image = _render([(rng.choice(SHAPES), rng.randint(MIN_SIDE, MAX_SIDE), colour)], rng)
        return image, QUESTIONS["colour"], colour, colours
    if kind == "compare":
        big_colour, small_colour = rng.sample(colours, 2)
        small = rng.randint(*COMPARE_SMALL)
        big = rng.randint(math.ceil(COMPARE_RATIO * small), COMPARE_MAX)
        items = [(rng.choice(SHAPES), big, big_colour), (rng.choice(SHAPES), small, small_colour)]
        rng.shuffle(items)
        c1, c2 = rng.sample([big_colour, small_colour], 2)
        return _render(items, rng), QUESTIONS["compare"].format(c1=c1, c2=c2), big_colour, [c1, c2]
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def draw_example(kind: str, rng: random.Random) -> tuple[Image.Image, str, str]:
    """One example of ``kind`` (``count``, ``colour`` or ``compare``): (128x128 RGB image, question, answer)."""
    image, question, answer, _ = _draw(kind, rng)
    return image, question, answer


def _write_jsonl(path: Path, records: list[dict]) -> int:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


def _split(name: str, n: int, rng: random.Random, image_dir: Path, seen: set[bytes]) -> list[dict]:
    """Draw ``n`` examples (kinds cycling), save their PNGs, return plain example dicts. Images whose pixels are
    already in ``seen`` are redrawn, so no image repeats within or across splits."""
    examples = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        while True:
            image, question, answer, space = _draw(kind, rng)
            key = image.tobytes()
            if key not in seen:
                seen.add(key)
                break
        wrong = rng.choice([a for a in space if a != answer])
        rel = f"images/{name}-{i:05d}.png"
        image.save(image_dir.parent / rel, format="PNG", optimize=True)
        examples.append({"kind": kind, "question": question, "answer": answer, "wrong": wrong, "image": rel})
    return examples


def _prompt_record(ex: dict) -> dict:
    return {"prompt": [{"role": "user", "content": IMAGE_TOKEN + ex["question"]}], "images": [ex["image"]],
            "answer": ex["answer"], "task": ex["kind"]}


def _pair_record(ex: dict) -> dict:
    return {"prompt": [{"role": "user", "content": IMAGE_TOKEN + ex["question"]}],
            "chosen": [{"role": "assistant", "content": ex["answer"]}],
            "rejected": [{"role": "assistant", "content": ex["wrong"]}],
            "images": [ex["image"]], "task": ex["kind"]}


def generate_shapes_task(out_dir: Path, n_train: int = 600, n_heldout: int = 200, n_rl: int = 1200,
                        n_test: int = 800, seed: int = 0) -> dict[str, int]:
    """Write ``images/*.png`` and ``sft.jsonl``, ``prompts.jsonl``, ``pairs.jsonl`` (train images),
    ``heldout.jsonl`` (held-out images) and ``rl-prompts.jsonl``, ``rl-pairs.jsonl`` (``n_rl`` further images that
    neither SFT nor the held-out set has: the RL and preference stages' own data) and ``test.jsonl`` (``n_test``
    images in no other split: a larger second held-out set, for paired tests with enough power) into ``out_dir``;
    image paths are relative to ``out_dir``. Earlier PNGs of these splits are removed first. Returns the
    number of records per file. The same arguments give byte-identical files."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*image_dir.glob("train-*.png"), *image_dir.glob("heldout-*.png"), *image_dir.glob("rl-*.png"),
                  *image_dir.glob("test-*.png")]:
        stale.unlink()  # a previous, larger generation's images would otherwise linger
    master = random.Random(seed)
    # later splits' generators are drawn after earlier ones, so adding a split left the earlier files as they were
    train_rng, heldout_rng, rl_rng, test_rng = (random.Random(master.getrandbits(64)) for _ in range(4))
    seen: set[bytes] = set()
    train = _split("train", n_train, train_rng, image_dir, seen)
    heldout = _split("heldout", n_heldout, heldout_rng, image_dir, seen)
    rl = _split("rl", n_rl, rl_rng, image_dir, seen)
    test = _split("test", n_test, test_rng, image_dir, seen)
    sft = [{"messages": [{"role": "user", "content": IMAGE_TOKEN + ex["question"]},
                         {"role": "assistant", "content": ex["answer"]}],
            "images": [ex["image"]], "task": ex["kind"]} for ex in train]
    return {
        "sft.jsonl": _write_jsonl(out_dir / "sft.jsonl", sft),
        "prompts.jsonl": _write_jsonl(out_dir / "prompts.jsonl", [_prompt_record(ex) for ex in train]),
        "pairs.jsonl": _write_jsonl(out_dir / "pairs.jsonl", [_pair_record(ex) for ex in train]),
        "heldout.jsonl": _write_jsonl(out_dir / "heldout.jsonl", [_prompt_record(ex) for ex in heldout]),
        "rl-prompts.jsonl": _write_jsonl(out_dir / "rl-prompts.jsonl", [_prompt_record(ex) for ex in rl]),
        "rl-pairs.jsonl": _write_jsonl(out_dir / "rl-pairs.jsonl", [_pair_record(ex) for ex in rl]),
        "test.jsonl": _write_jsonl(out_dir / "test.jsonl", [_prompt_record(ex) for ex in test]),
    }


def chance_accuracy(records) -> float:
    """Expected exact match of guessing uniformly over each record's answer space (count 1/4, colour 1/6,
    compare 1/2), averaged over ``records`` (dicts with a ``task`` key)."""
    records = list(records)
    if not records:
        raise ValueError("chance_accuracy needs at least one record")
    return sum(CHANCE[r["task"]] for r in records) / len(records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignloop.data.shapes_task", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=600, help="train examples (sft, prompts, pairs)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out examples")
    parser.add_argument("--rl", type=int, default=1200, help="further examples for RL prompts and preference pairs")
    parser.add_argument("--test", type=int, default=800, help="a second, larger held-out set (test.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = generate_shapes_task(args.out, n_train=args.train, n_heldout=args.heldout, n_rl=args.rl,
                                  n_test=args.test, seed=args.seed)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
