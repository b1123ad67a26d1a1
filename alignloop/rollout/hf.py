"""``HFSampler``: sampling from any transformers causal LM (peft-wrapped or not) with its KV cache."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from alignloop.errors import ConfigError
from alignloop.models.lora import lora_merged_view
from alignloop.models.precision import native_bf16
from alignloop.rollout.base import Prompt, Rollout, TokenizedPrompt
from alignloop.rollout.decode import BatchOutput, DecodeOptions, decode_batch
from alignloop.rollout.logprobs import accepts_logits_to_keep, model_device
from alignloop.rollout.prompts import encode_prompts
from alignloop.rollout.sampling import SamplingSettings
from alignloop.rollout.stops import StopChecker, cut_at_stop, normalize_stops

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": None,
    "float32": None,
    "none": None,
}


def resolve_autocast_dtype(
    dtype: torch.dtype | str | None, model: torch.nn.Module, device: torch.device
) -> torch.dtype | None:
    """The autocast dtype to decode under, or None for the model's own precision.

    ``"auto"`` picks bf16 autocast for an fp32 model when the hardware runs bf16 matmuls natively
    (CUDA with bf16, or a CPU with AVX512-BF16 / AMX), and no autocast otherwise.
    """
    if isinstance(dtype, str):
        key = dtype.lower()
        if key == "auto":
            if all(p.dtype != torch.float32 for p in model.parameters()):
                return None  # a model loaded in half precision decodes as it is
            return torch.bfloat16 if native_bf16(device) else None
        if key not in _DTYPE_NAMES:
            raise ConfigError(f"dtype: expected one of auto, bf16, fp16, fp32, got {dtype!r}")
        return _DTYPE_NAMES[key]
    if dtype is None or dtype == torch.float32:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return dtype
    raise ConfigError(f"dtype: expected torch.bfloat16, torch.float16, torch.float32 or None, got {dtype}")


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@dataclass(frozen=True)
class _Piece:
    """``count`` samples of prompt ``prompt``, starting at sample number ``first``."""

    prompt: int
    first: int
    count: int


def plan_batches(prompt_lengths: list[int], n: int, batch_size: int) -> list[list[_Piece]]:
    """Group samples into batches of at most ``batch_size`` rows, longest prompts first.

    Sorting by length keeps the left padding small; a prompt's samples stay together when they
    fit, so the prompt is prefilled once per batch.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    batches: list[list[_Piece]] = [[]]
    room = batch_size
    for prompt in order:
        first = 0
        while first < n:
            if room == 0:
                batches.append([])
                room = batch_size
            count = min(n - first, room)
            batches[-1].append(_Piece(prompt, first, count))
            first += count
            room -= count
    return [batch for batch in batches if batch]


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


class HFSampler:
    """Samples with the model's own forward and KV cache, recording each token's log-prob.

    ``batch_size`` is the number of sequences decoded together. ``device`` is where inputs and the
    returned rollout live (default: the model's device; the model is not moved). ``dtype`` is the
    compute precision: ``"auto"`` (bf16 autocast on hardware with native bf16 matmuls), ``"bf16"``,
    ``"fp16"`` or ``"fp32"`` / None (no autocast). Log-probs are always returned in float32.
    ``merge_lora`` decodes a LoRA model in fp32 with its adapters folded into temporary weights
    (``models.lora.lora_merged_view``): the same function up to fp32 rounding, fewer module calls per
    token. Not under bf16/fp16 autocast, where rounding ``W + ΔW`` to ``W``'s ulp loses small adapters.
    ``logprobs``: ``"full"`` reports each token's log-prob under ``softmax(logits / T)`` over the whole vocabulary,
    ``"sampled"`` under the top-k / top-p candidates it was drawn from, renormalised (``rollout.sampling``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = "auto",
        merge_lora: bool = True,
        static_cache: bool = True,
        share_prefix: bool = True,
        fused_sampling: bool = True,
        logprobs: str = "full",
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.merge_lora = merge_lora
        self.static_cache = static_cache
        self.share_prefix = share_prefix
        self.fused_sampling = fused_sampling
        self.logprobs = logprobs
        SamplingSettings(logprobs=logprobs)  # a bad value fails here, not at the first generate
        self.last_stats: dict[str, float] = {}  # wall seconds of the last call's prefill and decode phases
        self.device = torch.device(device) if device is not None else model_device(model)
        self.autocast_dtype = resolve_autocast_dtype(dtype, model, self.device)
        generation_config = getattr(model, "generation_config", None)
        eos = _token_ids(tokenizer.eos_token_id) + _token_ids(getattr(generation_config, "eos_token_id", None))
        if not eos:
            raise ConfigError("the tokenizer and the model define no EOS token: cannot tell where a response ends")
        self.eos_ids = torch.tensor(sorted(set(eos)), dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]

    @contextlib.contextmanager
    def _generation_mode(self) -> Iterator[None]:
        """Eval mode (no dropout), no autograd, optional autocast; the model's flags are restored after.

        Under autocast, decoding one token per step would re-cast every fp32 weight to bf16 at
        every step, which costs more than the bf16 matmul saves. Autocast caches the cast of a
        weight for the whole region only when the weight requires grad and grad mode is not
        inference mode, so we use ``no_grad`` there and briefly mark frozen weights (a LoRA base,
        a reference model) as requiring grad: one cast per ``generate`` call instead of one per step.
        The same holds when the caller already runs ``generate`` under autocast.
        """
        modes = [(module, module.training) for module in self.model.modules()]
        frozen: list[torch.nn.Parameter] = []
        self.model.eval()
        stack = contextlib.ExitStack()
        try:
            fp32 = self.autocast_dtype is None and not torch.is_autocast_enabled(self.device.type)
            if fp32:
                if self.merge_lora:  # fp32 only: in bf16, W + ΔW rounds to W's ulp and swallows small adapters
                    stack.enter_context(lora_merged_view(self.model))
                with torch.inference_mode():
                    yield
                return
            frozen = [p for p in self.model.parameters() if not p.requires_grad and p.dtype == torch.float32]
            for param in frozen:
                param.requires_grad_(True)
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()  # keep the caller's autocast as it is
            )
            with torch.no_grad(), autocast:
                yield
        finally:
            for param in frozen:
                param.requires_grad_(False)
            stack.close()
            for module, mode in modes:
                module.training = mode

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Rollout:
        """Sample ``n`` responses per prompt. ``temperature=0`` is greedy.

        Same prompts, settings, ``batch_size`` and ``seed`` give the same rollout. Without a
        seed, one is drawn from torch's global RNG, so ``torch.manual_seed`` makes runs repeatable.
        """
        if n < 1:
            raise ConfigError(f"n: must be >= 1, got {n}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        options = DecodeOptions(
            max_new_tokens=max_new_tokens,
            sampling=SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, logprobs=self.logprobs),
            eos_ids=self.eos_ids.to(self.device),
            pad_id=self.pad_id,
            logits_to_keep=accepts_logits_to_keep(self.model),
            static_cache=self.static_cache,
            share_prefix=self.share_prefix,
            fused_sampling=self.fused_sampling,
        )
        token_lists, shown = encode_prompts(self.tokenizer, prompts)
        images = [p.images if isinstance(p, TokenizedPrompt) else () for p in prompts]
        images = images if any(images) else None
        stops = normalize_stops(stop)
        checker = StopChecker(self.tokenizer, stops) if stops else None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator(device=self.device).manual_seed(seed)

        batches = plan_batches([len(ids) for ids in token_lists], n, self.batch_size)
        outputs: list[BatchOutput] = []
        with self._generation_mode():
            for batch in batches:
                ids, mask = left_pad([token_lists[piece.prompt] for piece in batch], self.pad_id, self.device)
                repeats = torch.tensor([piece.count for piece in batch], dtype=torch.long)
                rows_images = [images[piece.prompt] for piece in batch] if images is not None else None
                outputs.append(decode_batch(self.model, ids, mask, repeats, options, generator, checker, rows_images))
        self.last_stats = {"prefill_seconds": sum(out.prefill_seconds for out in outputs),
                           "decode_seconds": sum(out.decode_seconds for out in outputs)}
        # Assembled outside inference mode, so training code can use the tensors with autograd.
        rollout = self._assemble(outputs, batches, shown, n, stops)
        if images is not None:
            rollout.images = [images[i // n] for i in range(len(rollout))]
        return rollout

    def _assemble(
        self, outputs: list[BatchOutput], batches: list[list[_Piece]], shown: list[Any], n: int, stops: list[str]
    ) -> Rollout:
        rows = len(shown) * n
        prompt_width = max(out.prompt_ids.shape[1] for out in outputs)
        response_width = max(out.tokens.shape[1] for out in outputs)
        device = self.device

        def full(width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((rows, width), value, dtype=dtype, device=device)

        prompt_ids, prompt_mask = full(prompt_width, self.pad_id, torch.long), full(prompt_width, 0, torch.long)
        response_ids, logprobs = full(response_width, self.pad_id, torch.long), full(response_width, 0.0, torch.float32)
        lengths = torch.zeros(rows, dtype=torch.long, device=device)
        ended_with_eos = torch.zeros(rows, dtype=torch.bool, device=device)
        ended_with_stop = torch.zeros(rows, dtype=torch.bool, device=device)
        for out, batch in zip(outputs, batches):
            # Output row of each sample: prompt-major, sample number within the prompt.
            index = torch.tensor(
                [piece.prompt * n + piece.first + k for piece in batch for k in range(piece.count)], device=device
            )
            width, steps = out.prompt_ids.shape[1], out.tokens.shape[1]
            prompt_ids[index, prompt_width - width :] = out.prompt_ids
            prompt_mask[index, prompt_width - width :] = out.prompt_mask
            response_ids[index, :steps] = out.tokens
            logprobs[index, :steps] = out.logprobs
            lengths[index] = out.lengths
            ended_with_eos[index] = out.ended_with_eos
            ended_with_stop[index] = out.ended_with_stop
        response_mask = (torch.arange(response_width, device=device).unsqueeze(0) < lengths.unsqueeze(1)).long()

        token_rows = [ids[:length] for ids, length in zip(response_ids.tolist(), lengths.tolist())]
        texts = self.tokenizer.batch_decode(token_rows, skip_special_tokens=True)
        responses = [cut_at_stop(text, stops)[0] for text in texts] if stops else list(texts)
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=logprobs,
            ended_with_eos=ended_with_eos,
            ended_with_stop=ended_with_stop,
            prompts=[shown[i // n] for i in range(rows)],
            responses=responses,
            group_index=torch.arange(len(shown), device=device).repeat_interleave(n),
        )
