"""KTO's data: unpaired records, or preference pairs split in two, tokenised into DPO's shared-prompt layout.

Records are TRL's unpaired format ``{"prompt", "completion", "label": true | false}`` (kind ``unpaired`` in
``data/schema.py``), or pair / ranking records: each pair gives one desirable example (its chosen answer) and one
undesirable example (its rejected answer), as TRL's ``unpair_preference_dataset`` does.

The reference point z0 (``algos.kto_reference_point``) scores completions under prompts they were not written for.
Each example gets one such completion for good, fixed before training: that of the example before it in a seeded
shuffle, skipping examples with the same prompt (TRL pairs each prompt with its neighbour's completion when it
builds its KL data set). An example is then a ``PairExample`` whose two branches share the prompt: ``chosen_ids``
the example's own completion, ``rejected_ids`` the mismatched one. One forward gives both log-probs, and DPO's
collation, reference cache and log-prob code serve KTO unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from alignloop.data import first_record_keys, load_records, tokenize_prompt_completion
from alignloop.stages.dpo.batch import PairExample
from alignloop.stages.dpo.data import load_pairs

__all__ = ["KTOExamples", "KTORecordFormat", "build_examples", "load_kto_records", "mismatched", "unpair"]

KTORecordFormat = Literal["auto", "unpaired", "pair", "ranking"]
_SEARCH = 64  # how far back in the shuffle a mismatched completion is looked for


def load_kto_records(path: str | Path, record_format: KTORecordFormat = "auto", skip_invalid: bool = False) -> list:
    """Unpaired records, or pair records (rankings expanded into pairs), as they are in ``path``.

    ``auto`` reads unpaired records when the first record has ``completion`` or ``label`` (so a record missing
    its label is reported as such), and pairs or rankings otherwise.
    """
    kind = record_format
    if kind == "auto":
        keys = first_record_keys(path)
        kind = "unpaired" if "completion" in keys or "label" in keys else "auto"
    if kind == "unpaired":
        return load_records(path, "unpaired", skip_invalid=skip_invalid)
    return load_pairs(path, kind, skip_invalid)


def unpair(records: list[dict]) -> list[dict]:
    """``{"prompt", "completion", "label", "pair"}`` examples: an unpaired record as it is (``pair`` None), a pair
    record as its chosen (``label`` True) and then its rejected answer (False), both with the pair's number."""
    examples = []
    for number, record in enumerate(records):
        if "completion" in record:
            examples.append({"prompt": record["prompt"], "completion": record["completion"],
                             "label": record["label"], "pair": None})
            continue
        for side, label in (("chosen", True), ("rejected", False)):
            examples.append({"prompt": record["prompt"], "completion": record[side], "label": label, "pair": number})
    return examples


def mismatched(examples: list[dict], seed: int) -> list[int]:
    """For each example, the index of the example whose completion its KL term scores: the one before it in a
    seeded shuffle, or further back when that one has the same prompt (within ``_SEARCH`` places)."""
    n = len(examples)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    out = [0] * n
    for position, i in enumerate(order):
        out[i] = order[(position - 1) % n]
        for back in range(1, min(n, _SEARCH + 1)):
            j = order[(position - back) % n]
            if examples[j]["prompt"] != examples[i]["prompt"]:
                out[i] = j
                break
    return out


@dataclass
class KTOExamples:
    """Tokenised KTO examples of one split: ``labels[i]`` is True when ``examples[i]`` is desirable; ``pairs`` holds
    the (desirable, undesirable) example indices of every pair record that kept both halves."""

    examples: list[PairExample] = field(default_factory=list)
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    pairs: list[tuple[int, int]] = field(default_factory=list)
    dropped: int = 0

    @property
    def desirable(self) -> int:
        return int(self.labels.sum())

    @property
    def undesirable(self) -> int:
        return len(self.examples) - self.desirable


def build_examples(tokenizer, records: list[dict], seed: int, max_length: int,
                   max_prompt_length: int | None) -> KTOExamples:
    """Unpair, pick each example's mismatched completion and tokenise both under the example's prompt.

    Each completion is cut to fit ``max_length`` with the prompt (the prompt first cut from the left to
    ``max_prompt_length``), as for DPO; an example whose completion (or mismatched completion) truncation leaves
    empty is dropped and counted.
    """
    examples = unpair(records)
    other = mismatched(examples, seed)
    out = KTOExamples()
    labels: list[bool] = []
    halves: dict[int, dict[bool, int]] = {}
    for i, example in enumerate(examples):
        prompt, completion = tokenize_prompt_completion(
            tokenizer, example["prompt"], example["completion"], max_length, max_prompt_length
        )
        prompt_kl, kl_completion = tokenize_prompt_completion(
            tokenizer, example["prompt"], examples[other[i]]["completion"], max_length, max_prompt_length
        )
        if not prompt or not completion or not kl_completion or prompt != prompt_kl:
            out.dropped += 1
            continue
        if example["pair"] is not None:
            halves.setdefault(example["pair"], {})[example["label"]] = len(out.examples)
        out.examples.append(PairExample(prompt, completion, kl_completion, index=len(out.examples)))
        labels.append(bool(example["label"]))
    out.labels = torch.tensor(labels, dtype=torch.bool)
    out.pairs = [(h[True], h[False]) for h in halves.values() if len(h) == 2]
    return out
