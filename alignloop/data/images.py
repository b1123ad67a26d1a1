"""Images in records: an ``images`` list beside the messages, one ``<image>`` placeholder per entry.

An entry is a path (relative to the data file, or absolute), a ``data:image/...;base64,`` URI or a bare
base64 string. ``check_images`` runs while records load, so a missing or unreadable image, or a placeholder
count that does not match, is reported as ``file:line: images[i]: ...`` before any model is built.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_PLACEHOLDER", "check_images", "count_placeholders", "open_image", "resolve_image"]

IMAGE_PLACEHOLDER = "<image>"
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}$")
_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def _texts(messages: Any) -> list[str]:
    if isinstance(messages, str):
        return [messages]
    if isinstance(messages, list):
        return [m.get("content", "") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return []


def count_placeholders(messages: Any) -> int:
    return sum(text.count(IMAGE_PLACEHOLDER) for text in _texts(messages))


def _is_base64(entry: str) -> bool:
    return bool(_DATA_URI.match(entry)) or (len(entry) >= 64 and "/" not in entry[:16] and bool(_BASE64.match(entry)))


def resolve_image(entry: str, base_dir: Path) -> str:
    """An absolute path for a path entry (relative ones against ``base_dir``); base64 entries unchanged."""
    if _is_base64(entry):
        return entry
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def open_image(entry: str) -> Image.Image:
    """The RGB image an entry names; ``ValueError`` with the reason when it cannot be read."""
    try:
        if _is_base64(entry):
            payload = _DATA_URI.sub("", entry, count=1)
            try:
                raw = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"not valid base64 ({err})") from err
            image = Image.open(io.BytesIO(raw))
        else:
            if not Path(entry).is_file():
                raise ValueError(f"no such file '{entry}'")
            image = Image.open(entry)
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"cannot read the image '{_short(entry)}': not an image file PIL can open") from None
    except OSError as err:
        raise ValueError(f"cannot read the image '{_short(entry)}': {err}") from None
    return image.convert("RGB")


def _short(entry: str) -> str:
    return entry if len(entry) <= 80 else entry[:40] + "…"


def check_images(record: dict, base_dir: Path, problems: list[str], *, fields: tuple[str, ...]) -> None:
    """Resolve ``record["images"]`` in place and report every problem (the caller adds file and line).

    ``fields`` are the message fields whose placeholders must match the images (e.g. ``messages`` or
    ``prompt``); other fields (responses) must not hold placeholders.
    """
    images = record.get("images")
    wanted = sum(count_placeholders(record.get(field)) for field in fields)
    stray = [f for f in ("chosen", "rejected", "completion", "responses") if count_placeholders(record.get(f))]
    for field in stray:
        if field not in fields:
            problems.append(f"{field}: holds an {IMAGE_PLACEHOLDER} placeholder; images belong to the prompt")
    if images is None:
        if wanted:
            problems.append(f"images: missing, but the messages hold {wanted} {IMAGE_PLACEHOLDER} placeholder(s)")
        return
    if not isinstance(images, list) or not all(isinstance(entry, str) and entry for entry in images):
        problems.append("images: must be a list of image paths or base64 strings")
        return
    if len(images) != wanted:
        problems.append(f"images: {len(images)} image(s) but {wanted} {IMAGE_PLACEHOLDER} placeholder(s) "
                        f"in {' / '.join(fields)}")
    resolved = []
    for index, entry in enumerate(images):
        entry = resolve_image(entry, base_dir)
        try:
            open_image(entry).close()
        except ValueError as err:
            problems.append(f"images[{index}]: {err}")
        resolved.append(entry)
    record["images"] = resolved
