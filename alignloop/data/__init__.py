"""Records (schemas, loaders with line-numbered errors), chat-template tokenisation, loss masks, packing, collators."""

from alignloop.data.chat import (
    TokenizedExample,
    prompt_completion_example,
    render_chat,
    tokenize_conversation,
    tokenize_prompt,
    tokenize_prompt_completion,
)
from alignloop.data.collate import IGNORE_INDEX, block_causal_mask, collate_packed, pad_batch, sequence_ids
from alignloop.data.packing import PackedRow, pack_examples
from alignloop.data.records import (
    Records,
    first_record_keys,
    load_records,
    rankings_to_pairs,
    resolve_data_path,
    split_data_path,
    split_records,
    truncate_pair,
)
from alignloop.data.schema import KINDS, validate_record

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "PackedRow",
    "Records",
    "TokenizedExample",
    "block_causal_mask",
    "collate_packed",
    "first_record_keys",
    "load_records",
    "pack_examples",
    "pad_batch",
    "prompt_completion_example",
    "rankings_to_pairs",
    "render_chat",
    "resolve_data_path",
    "sequence_ids",
    "split_data_path",
    "split_records",
    "tokenize_conversation",
    "tokenize_prompt",
    "tokenize_prompt_completion",
    "truncate_pair",
    "validate_record",
]
