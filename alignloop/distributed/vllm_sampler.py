"""``VLLMSampler``: the ``Sampler`` protocol on vLLM, for rollout workers on CUDA GPUs.

vLLM is an optional dependency and needs a CUDA GPU; both are checked up front with a one-line error.
The sampler returns the same ``Rollout`` as ``HFSampler`` (left-padded prompts, right-padded responses,
per-token log-probs of the sampled tokens) and accepts weight updates from the learner.

Log-probs: vLLM's kernels differ numerically from the learner's HF forward, so for PPO-style ratios set
``<stage>.reuse_sampler_logprobs: false`` (the learner then recomputes the old log-probs itself).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from alignloop.distributed.weights import tensors_checksum
from alignloop.errors import ConfigError
from alignloop.models import load_tokenizer
from alignloop.models.registry import resolve_model
from alignloop.rollout import Rollout
from alignloop.rollout.prompts import encode_prompts


def require_vllm():
    """The ``vllm`` module, or a ConfigError saying exactly what is missing."""
    if not torch.cuda.is_available():
        raise ConfigError("rollout backend 'vllm' needs a CUDA GPU and none is available here; use backend 'hf'")
    try:
        import vllm  # optional dependency: GPU rollouts only
    except ImportError:
        raise ConfigError("rollout backend 'vllm' needs the vllm package: pip install vllm") from None
    return vllm


def _load_weights_fn(worker: Any, tensors: dict[str, torch.Tensor]) -> None:
    # runs inside vLLM's worker process (collective_rpc); vLLM's loader maps HF names to its fused layers
    worker.model_runner.model.load_weights(weights=list(tensors.items()))


class VLLMSampler:
    """A vLLM engine over the policy. LoRA policies are served merged: the learner sends merged weights."""

    def __init__(self, model: str, lora: Any = None, dtype: str = "auto", gpu_memory_utilization: float = 0.4,
                 max_model_len: int = 2048, enforce_eager: bool = True, **engine_options: Any):
        vllm = require_vllm()
        if lora is not None:
            raise ConfigError(
                "rollout backend 'vllm': LoRA policies are not supported yet; use full fine-tuning or backend 'hf'"
            )

        path = resolve_model(model)
        if str(path) == "tiny-llama":
            raise ConfigError("rollout backend 'vllm' needs a model folder; tiny-llama only exists in memory")
        self.tokenizer = load_tokenizer(model)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.llm = vllm.LLM(model=str(path), dtype="bfloat16" if dtype == "auto" else "float32",
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            enforce_eager=enforce_eager, **engine_options)
        self._checksum = ""

    def generate(self, prompts: Sequence[Any], n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: Any = None, seed: int | None = None) -> Rollout:
        from vllm import SamplingParams, TokensPrompt  # optional dependency (see require_vllm)

        token_lists, shown = encode_prompts(self.tokenizer, list(prompts))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        params = SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k if top_k > 0 else -1, stop=stops or None, seed=seed, logprobs=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_lists], params, use_tqdm=False)
        rows = []
        for g, (ids, out) in enumerate(zip(token_lists, outputs)):
            for comp in out.outputs:
                logps = [next(iter(d.values())).logprob if d else 0.0 for d in (comp.logprobs or [])]
                stopped_by_string = isinstance(comp.stop_reason, str)
                eos = comp.finish_reason == "stop" and not stopped_by_string
                rows.append((g, ids, list(comp.token_ids), logps, eos, stopped_by_string, comp.text))
        return self._rollout(rows, shown)

    def _rollout(self, rows: list, shown: list) -> Rollout:
        p_width = max(len(r[1]) for r in rows)
        r_width = max(1, max(len(r[2]) for r in rows))
        n = len(rows)
        prompt_ids = torch.full((n, p_width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((n, p_width), dtype=torch.long)
        response_ids = torch.full((n, r_width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((n, r_width), dtype=torch.long)
        logprobs = torch.zeros((n, r_width), dtype=torch.float32)
        for i, (_, ids, resp, logps, *_rest) in enumerate(rows):
            prompt_ids[i, p_width - len(ids):] = torch.tensor(ids)
            prompt_mask[i, p_width - len(ids):] = 1
            if resp:
                response_ids[i, : len(resp)] = torch.tensor(resp)
                response_mask[i, : len(resp)] = 1
                logprobs[i, : len(logps)] = torch.tensor(logps, dtype=torch.float32)
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
            logprobs=logprobs, ended_with_eos=torch.tensor([r[4] for r in rows]),
            ended_with_stop=torch.tensor([r[5] for r in rows]), prompts=[shown[r[0]] for r in rows],
            responses=[r[6] for r in rows], group_index=torch.tensor([r[0] for r in rows], dtype=torch.long),
        )

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        self.llm.collective_rpc(_load_weights_fn, args=(tensors,))
        # vLLM fuses and shards layers, so a byte checksum of its own parameters cannot match the learner's;
        # the worker reports the checksum of the tensors it was given and loaded instead

        self._checksum = tensors_checksum(tensors)

    def checksum(self) -> str:
        return self._checksum
