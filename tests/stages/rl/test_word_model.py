"""A word-level toy LM for the RL behaviour tests, and the rule reward they optimise.

tiny-llama samples almost uniformly from 49k tokens, so a reward on one target token never sees it. This
toy model has a 16-word vocabulary: the target word ``yes`` shows up by chance (~1/16 per token), a policy
gradient can raise it within a few dozen updates, and a rollout costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["<pad>", "<eos>", "<unk>", "yes", "no", "red", "blue", "green", "cat", "dog", "sun", "moon", "one", "two", "up", "down"]
TARGET = "yes"


def target_fraction(prompts, completions, **fields):
    """Share of the response's words that are the target word (0 for an empty response)."""
    out = []
    for text in completions:
        words = text.split()
        out.append(words.count(TARGET) / len(words) if words else 0.0)
    return out


def make_word_model(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer Llama over ``WORDS`` with a whitespace word tokenizer and a plain chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_prompts(path: Path, n: int = 32) -> str:
    rows = [{"prompt": " ".join(WORDS[5 + (i * k) % 11] for k in range(1, 4))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_word_model_round_trips_text_and_scores(tmp_path):
    from alignloop.models import load_causal_lm, load_tokenizer

    folder = make_word_model(tmp_path / "m")
    tok = load_tokenizer(folder)
    ids = tok("yes no cat", add_special_tokens=False)["input_ids"]
    assert ids == [3, 4, 8] and tok.decode(ids) == "yes no cat"
    assert load_causal_lm(folder).config.vocab_size == 16
    # "yes no yes" → 2 of 3 words; empty response → 0
    assert target_fraction([], ["yes no yes", ""]) == [2 / 3, 0.0]
