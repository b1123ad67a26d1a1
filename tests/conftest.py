"""Helpers and fixtures shared by the test modules (tests/feedback/conftest.py adds the web app's own).

Test modules import the plain helpers with ``from tests.conftest import ...`` (never from another test
module); subprocess scripts that put the repository on ``sys.path`` can import them the same way.

- ``ROOT``: the repository root.
- ``ToyStage``, ``make_data``, ``collate``: a tiny pure-torch stage for testing the loop.
- ``WORDS``, ``TARGET``, ``target_fraction``, ``make_word_model``, ``write_prompts``: the word-level toy LM the
  RL behaviour tests train, and the rule reward they optimise (``grpo.reward=tests.conftest:target_fraction``).
- ``tiny_llama``: an *untied*, 512-position tiny Llama seeded through the global RNG (the rollout and packing
  tests' model; ``alignloop.models.build_tiny_llama`` is the library's tied, 8192-position one).
- ``plain_logits``, ``plain_scalar_values``: a saved model loaded with transformers / peft only, as a user elsewhere
  would (tests/stages/test_load_anywhere.py, the quickstart test).
- fixtures: ``word_model_dir`` (session), ``tiny_model_dir`` (session), ``tiny_tokenizer`` and its alias
  ``tokenizer`` (module scope: one instance per test module, as before).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from alignloop.config import StageConfig
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput

ROOT = Path(__file__).resolve().parents[1]


# ---- the toy regression stage (the loop and distributed tests) ------------------------------------------------


def make_data(n: int = 16, seed: int = 0) -> list[dict]:
    """Variable-length 'sequences' of regression tokens."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    out = []
    for i in range(n):
        t = 1 + (i * 7) % 4  # 1..4 tokens, different per example
        x = torch.randn(t, 4, generator=g)
        out.append({"x": x, "y": x @ w + 0.1 * torch.randn(t, generator=g)})
    return out


def collate(items: list[dict]) -> dict:
    return {"x": torch.cat([i["x"] for i in items]), "y": torch.cat([i["y"] for i in items])}


class ToyStage(Stage):
    """A tiny pure-torch stage for testing the loop: variable-length 'sequences' of regression tokens."""

    name = "toy"

    def __init__(self, config: StageConfig, data=None, interrupt_at: int | None = None, nan_at: set[int] | None = None):
        super().__init__(config)
        self.data = data if data is not None else make_data()
        self.interrupt_at = interrupt_at
        self.nan_at = nan_at or set()
        self.grads: list[torch.Tensor] = []
        self.calls = 0
        self.extra = {"counter": 0}

    def setup(self, run):
        torch.manual_seed(1234)
        self.models["model"] = nn.Linear(4, 1)

    def batches(self):
        tc = self.config.train
        return EpochBatchSource(self.data, tc.micro_batch_size or tc.batch_size, collate, seed=tc.seed)

    def units(self, batch):
        return batch["x"].shape[0]

    def step(self, batch):
        self.calls += 1
        pred = self.models["model"](batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).sum()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss=loss, units=batch["x"].shape[0], n_tokens=batch["x"].shape[0])

    def on_step_end(self, step, metrics):
        m = self.unwrap("model")
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in m.parameters()]) if m.weight.grad is not None else None)
        self.extra["counter"] += 1
        if self.interrupt_at == step:
            os.kill(os.getpid(), signal.SIGINT)

    def state_dict(self):
        return dict(self.extra)

    def load_state_dict(self, state):
        self.extra = dict(state)

    def save(self, out_dir: Path):
        torch.save(self.unwrap("model").state_dict(), Path(out_dir) / "toy.pt")


# ---- the word-level toy LM (the RL behaviour tests) -----------------------------------------------------------
#
# tiny-llama samples almost uniformly from 49k tokens, so a reward on one target token never sees it. This
# toy model has a 16-word vocabulary: the target word ``yes`` shows up by chance (~1/16 per token), a policy
# gradient can raise it within a few dozen updates, and a rollout costs milliseconds.

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


@pytest.fixture(scope="session")
def word_model_dir(tmp_path_factory) -> str:
    """``make_word_model(seed=0)`` saved once per session; tests only read it (their outputs go elsewhere)."""
    return str(make_word_model(tmp_path_factory.mktemp("word_model") / "model"))


# ---- saved models loaded without alignloop (issue 21) ---------------------------------------------------------


def plain_logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a saved causal LM loaded with plain transformers (full weights) or peft (an adapter), as
    ``alignloop_model.json``'s ``format`` says."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    fmt = json.loads((Path(folder) / "alignloop_model.json").read_text())["format"]
    model = (AutoPeftModelForCausalLM if fmt == "lora" else AutoModelForCausalLM).from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def plain_scalar_values(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token values of a saved reward/value model without alignloop: the backbone with ``AutoModel`` (an adapter
    with peft on its ``base_model_name_or_path``), then ``head.safetensors`` on the last hidden states."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder)
    else:
        backbone = AutoModel.from_pretrained(folder)
    head = load_file(str(folder / "head.safetensors"))
    with torch.no_grad():
        hidden = backbone.eval()(input_ids=input_ids).last_hidden_state.float()
    return hidden @ head["weight"].T + head["bias"]


# ---- tiny Llamas over the bundled 49152-token vocabulary --------------------------------------------------------


def tiny_llama(seed: int = 0, **overrides):
    """``build_tiny_llama`` as the rollout and packing tests use it: untied, 512 positions, ``LlamaConfig``'s own
    special-token ids; the *global* RNG is seeded with ``seed`` first. ``overrides`` go to ``LlamaConfig``."""
    from alignloop.models import build_tiny_llama

    settings = dict(max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                    pad_token_id=None)
    torch.manual_seed(seed)
    return build_tiny_llama(seed, **{**settings, **overrides})


@pytest.fixture(scope="session", params=["idefics3"])
def tiny_vlm_dir(request, tmp_path_factory) -> Path:
    """A random 2-layer VLM (``models.vision.build_tiny_vlm``, SmolVLM layout, 32×32 images, 4 image tokens per
    image) and its processor, saved once per session as a plain HF folder. Read-only for tests."""
    from alignloop.models import TINY_MODEL, load_tokenizer
    from alignloop.models.vision import build_tiny_vlm

    model, processor = build_tiny_vlm(load_tokenizer(TINY_MODEL), request.param, seed=0)
    folder = tmp_path_factory.mktemp(f"tiny_vlm_{request.param}") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shapes_data() -> Path:
    """The bundled synthetic image task (alignloop/resources/data/vlm_shapes): sft, pairs, prompts, heldout."""
    return ROOT / "alignloop" / "resources" / "data" / "vlm_shapes"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """``alignloop.models.build_tiny_llama(seed=0)`` and its tokenizer saved once per session with ``save_model``
    (a plain HF folder). Read-only for tests: save anything derived from it under ``tmp_path``."""
    from alignloop.models import (
        TINY_MODEL,
        build_tiny_llama,
        load_tokenizer,
        save_model,
    )

    folder = tmp_path_factory.mktemp("tiny_llama") / "model"
    save_model(build_tiny_llama(seed=0), load_tokenizer(TINY_MODEL), folder)
    return folder


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """tiny-llama's tokenizer (the bundled SmolLM2 one), loaded once per test module, so a module that changes
    it cannot affect another."""
    from alignloop.models import TINY_MODEL, load_tokenizer

    return load_tokenizer(TINY_MODEL)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    """The name most tests use for ``tiny_tokenizer``; a module's own ``tokenizer`` fixture overrides it."""
    return tiny_tokenizer


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on the shared 2-core CPU, two OpenMP threads fighting other processes made
    small-model tests ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
