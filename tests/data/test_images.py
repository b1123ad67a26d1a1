"""Images in records: paths relative to the data file, absolute paths and base64 all load; a missing image, an
unreadable file and a placeholder count that does not match are reported with file, line and field."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from alignloop.data import load_records
from alignloop.data.image_chat import expand_image_tokens, fit_keeping_images
from alignloop.data.images import open_image
from alignloop.errors import DataError


def png_bytes(colour=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sft(content: str, images) -> dict:
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "red"}],
            "images": images}


def write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_relative_absolute_and_base64_images_load(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes())
    encoded = base64.b64encode(png_bytes((0, 0, 255))).decode()
    write(tmp_path / "d.jsonl", [
        sft("<image>Colour?", ["imgs/a.png"]),
        sft("<image>Colour?", [str(tmp_path / "imgs" / "a.png")]),
        sft("<image>Colour?", ["data:image/png;base64," + encoded]),
        sft("<image>Colour?", [encoded]),
    ])
    records = load_records(tmp_path / "d.jsonl", "sft")
    assert records[0]["images"] == [str(tmp_path / "imgs" / "a.png")]  # resolved against the data file's folder
    assert open_image(records[2]["images"][0]).getpixel((0, 0)) == (0, 0, 255)
    assert open_image(records[3]["images"][0]).getpixel((0, 0)) == (0, 0, 255)


def test_bad_images_name_file_line_and_field(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "ok.png").write_bytes(png_bytes())
    path = tmp_path / "d.jsonl"
    write(path, [
        sft("<image>Colour?", ["ok.png"]),
        sft("<image>Colour?", ["missing.png"]),
        sft("<image>Colour?", ["broken.png"]),
        sft("<image><image>Colour?", ["ok.png"]),
        sft("Colour?", "ok.png"),
    ])
    with pytest.raises(DataError) as err:
        load_records(path, "sft")
    text = str(err.value)
    assert f"{path}:2: images[0]: no such file" in text
    assert f"{path}:3: images[0]: cannot read the image" in text
    assert f"{path}:4: images: 1 image(s) but 2 <image> placeholder(s)" in text
    assert f"{path}:5: images: must be a list" in text
    assert f"{path}:1:" not in text


def test_placeholders_belong_to_the_prompt(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes())
    pair = {"prompt": [{"role": "user", "content": "<image>Which?"}], "chosen": "<image> red", "rejected": "blue",
            "images": ["ok.png"]}
    write(tmp_path / "p.jsonl", [pair])
    with pytest.raises(DataError, match=r"p.jsonl:1: chosen: holds an <image> placeholder"):
        load_records(tmp_path / "p.jsonl", "pair")


def test_expansion_puts_no_loss_on_images_and_truncation_never_cuts_them():
    ids, mask = expand_image_tokens([5, 9, 6, 7], [0, 0, 1, 1], 9, [(8, 9, 9, 8)])
    assert ids == [5, 8, 9, 9, 8, 6, 7] and mask == [0, 0, 0, 0, 0, 1, 1]
    assert fit_keeping_images(ids, mask, 6, {8, 9}) == (ids[:6], mask[:6])  # the cut falls after the image
    with pytest.raises(DataError, match="image tokens are never truncated"):
        fit_keeping_images(ids, mask, 4, {8, 9})
    with pytest.raises(DataError, match="image tokens are never truncated"):
        fit_keeping_images(ids, mask, 5, {8, 9}, side="left")
    with pytest.raises(DataError, match="2 image\\(s\\) but 1 image placeholder"):
        expand_image_tokens([5, 9], None, 9, [(9,), (9,)])
