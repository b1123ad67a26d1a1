"""The rollout record that every stage exchanges, and the sampler interface.

A ``Rollout`` is plain data: tensors plus the matching texts. It holds no reference to the
model or sampler that produced it, so it can be moved, sliced, pickled and logged freely.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence, Union, runtime_checkable

import torch

Message = dict[str, str]


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt already turned into token ids, with the images its image tokens stand for (VLM prompts)."""

    token_ids: list[int]
    images: tuple = ()  # ``models.images.EncodedImage`` per image, in token order
    shown: Any = None  # what ``Rollout.prompts`` reports (the messages); decoded ids when None


# A prompt is plain text (sent as one user message), a chat message list, token ids, or a TokenizedPrompt.
Prompt = Union[str, list[Message], list[int], TokenizedPrompt]

_TENSOR_FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "response_ids",
    "response_mask",
    "logprobs",
    "ended_with_eos",
    "ended_with_stop",
    "group_index",
)


@dataclass
class Rollout:
    """``N`` sampled responses, ``N = len(prompts) * n`` rows in prompt-major order.

    Row ``i`` is sample ``i % n`` of prompt ``group_index[i]``.
    """

    prompt_ids: torch.Tensor  # [N, P] long, LEFT padded with the pad id
    prompt_mask: torch.Tensor  # [N, P] long, 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, R] long, RIGHT padded; tokens after the stop are pad
    response_mask: torch.Tensor  # [N, R] long, 1 on generated tokens up to and including EOS / stop token
    logprobs: torch.Tensor  # [N, R] float32 log-probs of the sampled tokens, 0 where response_mask is 0
    ended_with_eos: torch.Tensor  # [N] bool: the last generated token is an EOS token
    ended_with_stop: torch.Tensor  # [N] bool: generation stopped because a stop string appeared
    prompts: list[Any]  # [N] the prompt as given (str or messages); token-id prompts decoded to text
    responses: list[str]  # [N] decoded response, special tokens skipped, stop string removed
    group_index: torch.Tensor  # [N] long: which input prompt the row belongs to
    images: list[tuple] | None = None  # [N] each row's prompt images (a group's rows share the objects)
    # [N, R] long: 1 on the tokens the policy generated, 0 on tokens an environment inserted (multi-turn tool
    # output, alignloop/envs): in the context (response_mask) but out of the loss and the KL. None: = response_mask
    action_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def response_start(self) -> int:
        """Column where the response begins in ``input_ids()``."""
        return self.prompt_ids.shape[1]

    @property
    def finished(self) -> torch.Tensor:
        """[N] bool: the response ended by itself (EOS or stop string), not by the length limit."""
        return self.ended_with_eos | self.ended_with_stop

    @property
    def trained_mask(self) -> torch.Tensor:
        """[N, R] 1 on the response tokens the losses see: ``action_mask`` when set, else ``response_mask``."""
        return self.response_mask if self.action_mask is None else self.action_mask

    def response_lengths(self) -> torch.Tensor:
        """[N] number of generated tokens per row (EOS / stop token included)."""
        return self.response_mask.sum(dim=1)

    def input_ids(self) -> torch.Tensor:
        """[N, P + R] prompt followed by response (left pad, prompt, response, right pad)."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        """[N, P + R] 1 on real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def position_ids(self) -> torch.Tensor:
        """[N, P + R] positions that ignore the left padding (the first real token is 0)."""
        return position_ids_from_mask(self.attention_mask())

    def to(self, device: torch.device | str) -> Rollout:
        action = None if self.action_mask is None else self.action_mask.to(device)
        return replace(self, **{name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}, action_mask=action)

    def select(self, indices: Sequence[int] | torch.Tensor) -> Rollout:
        """Rows ``indices`` in that order; padding columns are kept as they are."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        rows = index.tolist()
        tensors = {name: getattr(self, name)[index.to(getattr(self, name).device)] for name in _TENSOR_FIELDS}
        return replace(
            self,
            **tensors,
            prompts=[self.prompts[i] for i in rows],
            responses=[self.responses[i] for i in rows],
            images=None if self.images is None else [self.images[i] for i in rows],
            action_mask=None if self.action_mask is None else self.action_mask[index.to(self.action_mask.device)],
        )


def _pad_to(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    pad = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Rows of ``parts`` in order, as if one sampler had produced them.

    Prompts stay left padded and responses right padded to the widest part; ``group_index`` of each
    part is shifted past the prompts of the parts before it. Images are kept when every part has them.
    """
    if not parts:
        raise ValueError("no rollouts to join")
    if len(parts) == 1:
        return parts[0]
    p_width = max(p.prompt_ids.shape[1] for p in parts)
    r_width = max(p.response_ids.shape[1] for p in parts)
    groups, offset = [], 0
    for p in parts:
        groups.append(p.group_index + offset)
        offset += int(p.group_index.max()) + 1 if len(p) else 0
    with_images = all(p.images is not None for p in parts)
    return Rollout(
        prompt_ids=torch.cat([_pad_to(p.prompt_ids, p_width, pad_id, left=True) for p in parts]),
        prompt_mask=torch.cat([_pad_to(p.prompt_mask, p_width, 0, left=True) for p in parts]),
        response_ids=torch.cat([_pad_to(p.response_ids, r_width, pad_id, left=False) for p in parts]),
        response_mask=torch.cat([_pad_to(p.response_mask, r_width, 0, left=False) for p in parts]),
        logprobs=torch.cat([_pad_to(p.logprobs, r_width, 0.0, left=False) for p in parts]),
        ended_with_eos=torch.cat([p.ended_with_eos for p in parts]),
        ended_with_stop=torch.cat([p.ended_with_stop for p in parts]),
        prompts=[x for p in parts for x in p.prompts],
        responses=[x for p in parts for x in p.responses],
        group_index=torch.cat(groups),
        images=[x for p in parts for x in p.images] if with_images else None,  # type: ignore[union-attr]
        action_mask=None if all(p.action_mask is None for p in parts)
        else torch.cat([_pad_to(p.trained_mask, r_width, 0, left=False) for p in parts]),
    )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at 0 like an unpadded one."""
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.clamp(min=0)


@runtime_checkable
class Sampler(Protocol):
    """Anything that turns prompts into a ``Rollout`` (the HF backend, a vLLM backend, a test double)."""

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
    ) -> Rollout: ...
