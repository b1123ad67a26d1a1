"""Process reward models (PRMs): a score for every step of a solution, read at the step's end token.

A solution is its steps joined by a separator (a newline by default). The PRM is a
``ScalarHeadModel``: its per-token output at the last token of each step is the logit of
P(step correct). A solution's score aggregates its step probabilities by ``min`` (as strong as
its weakest step), ``product`` (all steps right) or ``last``.

For PPO, ``response_step_ends`` maps the steps of a generated response to the positions of the
policy's own response tokens and ``place_step_rewards`` puts each step's reward at its final token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.errors import ConfigError, ModelError
from alignloop.models import ScalarHeadModel, load_tokenizer

AGGREGATES = ("min", "product", "last")
PRM_META = "alignloop_prm.json"


def split_steps(text: str, separator: str = "\n") -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the non-blank steps of ``text``, surrounding spaces trimmed."""
    spans, start = [], 0
    for piece in text.split(separator):
        stripped = piece.strip()
        if stripped:
            begin = start + piece.index(stripped)
            spans.append((begin, begin + len(stripped)))
        start += len(piece) + len(separator)
    return spans


def step_end_tokens(offsets: Sequence[tuple[int, int]], step_ends: Sequence[int]) -> list[int]:
    """For each step ending at character ``end`` (exclusive), the index of the token holding its last character.

    That is the last token that starts before ``end``. ``offsets`` are the tokens' ``(start, end)``
    character spans; zero-width tokens (special tokens) never count. A step with no token before
    its end (cut off by truncation) gets -1.
    """
    positions, token = [], 0
    for end in step_ends:
        while token < len(offsets) and offsets[token][0] < end:
            token += 1
        last = token - 1
        while last >= 0 and offsets[last][0] == offsets[last][1]:
            last -= 1  # skip zero-width tokens
        positions.append(last)
    return positions


@dataclass
class StepExample:
    """Token ids of prompt + solution and, per step, the index of its end token."""

    input_ids: list[int]
    step_ends: list[int]


def solution_text(steps: Sequence[str], separator: str = "\n") -> str:
    return separator.join(s.strip() for s in steps)


def tokenize_solution(tokenizer: Any, prompt: Any, steps: Sequence[str], separator: str = "\n") -> StepExample:
    """Tokenise the prompt (chat template, with the assistant header) and the steps as one text."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    else:
        head = "\n".join(m["content"] for m in prompt) + "\n"
    body = solution_text(steps, separator)
    encoding = tokenizer(head + body, add_special_tokens=False, return_offsets_mapping=True)
    spans = split_steps(body, separator)
    if len(spans) != len(steps):
        raise ConfigError(f"a step contains the step separator {separator!r}; steps: {list(steps)!r}")
    ends = step_end_tokens(encoding["offset_mapping"], [len(head) + end for _, end in spans])
    return StepExample(list(encoding["input_ids"]), ends)


def response_step_ends(
    tokenizer: Any, response_ids: Sequence[int], separator: str = "\n"
) -> tuple[list[str], list[int]]:
    """The steps of a generated response and, for each, the index (within ``response_ids``) of its last token.

    Character offsets come from decoding growing prefixes of the ids, so they match what the
    policy generated token by token (no re-tokenisation of the text).
    """
    ids = [int(t) for t in response_ids]
    pieces = [tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
    text = pieces[-1] if pieces else ""
    offsets, previous = [], 0
    for piece in pieces:
        # A token that ends mid-character decodes to a replacement char; its span is settled by a later token.
        length = len(piece) if text.startswith(piece) else previous
        offsets.append((previous, max(length, previous)))
        previous = max(length, previous)
    spans = split_steps(text, separator)
    return [text[s:e] for s, e in spans], step_end_tokens(offsets, [e for _, e in spans])


def place_step_rewards(
    step_scores: Sequence[torch.Tensor], step_ends: Sequence[Sequence[int]], width: int
) -> torch.Tensor:
    """Dense rewards ``[N, width]``: row i gets ``step_scores[i][k]`` at column ``step_ends[i][k]``, zero elsewhere.

    Steps with no token (end -1) are dropped; two steps ending on one token add up.
    """
    rewards = torch.zeros(len(step_scores), width)
    for row, (scores, ends) in enumerate(zip(step_scores, step_ends)):
        if len(scores) != len(ends):
            raise ValueError(f"row {row}: {len(scores)} step scores for {len(ends)} step ends")
        for value, end in zip(scores.tolist(), ends):
            if 0 <= end < width:
                rewards[row, end] += value
    return rewards


def aggregate_steps(probs: torch.Tensor, how: str = "min") -> float:
    """A solution's score from its step probabilities: ``min``, ``product`` or ``last`` (0 for no steps)."""
    if how not in AGGREGATES:
        raise ConfigError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {how!r}")
    if probs.numel() == 0:
        return 0.0
    if how == "min":
        return float(probs.min())
    if how == "product":
        return float(probs.prod())
    return float(probs[-1])


class ProcessRewardSource:
    """A trained PRM as a reward source: ``score`` aggregates steps, ``score_steps`` gives each step's P(correct)."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, *, aggregate: str = "min", separator: str = "\n",
        batch_size: int = 8, name: str = "prm",
    ):
        aggregate_steps(torch.ones(1), aggregate)  # validates the name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.aggregate = aggregate
        self.separator = separator
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "ProcessRewardSource":
        """Load a PRM folder written by the ``prm`` stage (the stage folder or its ``model/``)."""
        folder = Path(path)
        folder = folder / "model" if (folder / "model" / PRM_META).is_file() else folder
        if not (folder / PRM_META).is_file():
            raise ModelError(f"'{path}' is not a process reward model (no {PRM_META})")
        meta = json.loads((folder / PRM_META).read_text())
        options = {
            "aggregate": meta.get("aggregate", "min"),
            "separator": meta.get("separator", "\n"),
            "name": folder.parent.name or "prm",
        }
        options.update(overrides)
        return cls(ScalarHeadModel.from_pretrained(folder, trainable=False), load_tokenizer(folder), **options)

    def _steps(self, item: str | Sequence[str]) -> list[str]:
        if isinstance(item, str):
            return [item[s:e] for s, e in split_steps(item, self.separator)]
        return [s for s in item if s.strip()]

    @torch.no_grad()
    def score_steps(
        self, prompts: Sequence[Any], completions: Sequence[str | Sequence[str]], **fields: Any
    ) -> list[torch.Tensor]:
        """P(step correct) for every step; a completion is a text (split on the separator) or a list of steps."""
        examples = [
            tokenize_solution(self.tokenizer, p, self._steps(c), self.separator) for p, c in zip(prompts, completions)
        ]
        device = next(self.model.parameters()).device
        out: list[torch.Tensor] = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start : start + self.batch_size]
            width = max(len(e.input_ids) for e in chunk)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chunk], device=device)
            mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk]
            mask = torch.tensor(mask, device=device)
            logits = self.model(ids, mask)[..., 0].float().cpu()
            for row, example in enumerate(chunk):
                out.append(torch.sigmoid(logits[row, torch.tensor(example.step_ends, dtype=torch.long)]))
        return out

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        steps = self.score_steps(prompts, completions)
        return torch.tensor([aggregate_steps(s, self.aggregate) for s in steps], dtype=torch.float32)

    def dense_rewards(
        self, prompts: Sequence[Any], response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: Any
    ) -> torch.Tensor:
        """Per-token rewards ``[N, R]`` for PPO: each step's P(correct) at the policy token ending that step.

        ``tokenizer`` is the POLICY's (it decodes ``response_ids``); the PRM re-tokenises the step texts itself.
        """
        lengths = response_mask.sum(-1).tolist()
        split = [
            response_step_ends(tokenizer, ids[: int(n)].tolist(), self.separator)
            for ids, n in zip(response_ids, lengths)
        ]
        scores = self.score_steps(list(prompts), [steps for steps, _ in split])
        return place_step_rewards(scores, [ends for _, ends in split], response_ids.shape[1])

    def __repr__(self) -> str:
        return f"ProcessRewardSource({self.name!r}, aggregate={self.aggregate!r})"
