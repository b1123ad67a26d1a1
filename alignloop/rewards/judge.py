"""An LLM as a judge (RLAIF): pairwise preferences and pointwise 1–10 ratings from any local causal LM.

The verdict is read from the judge's next-token probabilities over the answer tokens ("A"/"B", or
"1".."10"), never parsed from free text, so every judgement is a soft probability. A pair is judged
in both orders (a shown as A, then b shown as A) and the two estimates averaged, which cancels a
preference for the first (or second) slot; how often the two orders disagree is the position-bias
rate. Optionally the judge writes a short chain of thought before the verdict is read.

As a reward source (``score``): pointwise mode gives the expected rating; pairwise mode gives
P(completion beats the record's ``reference`` completion). Both report an ``uncertainty``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.errors import ConfigError
from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.models.scalar_head import position_ids_from_mask
from alignloop.rollout import HFSampler

DEFAULT_CRITERIA = "Which response is more helpful, honest and harmless for the user?"
RATING_CHOICES = [str(k) for k in range(1, 11)]

PAIRWISE_TEMPLATE = """Compare two responses to the same request.
Criteria: {criteria}

[Request]
{prompt}

[Response A]
{a}

[Response B]
{b}

{instruction}"""

POINTWISE_TEMPLATE = """Rate a response to a request.
Criteria: {criteria}

[Request]
{prompt}

[Response]
{response}

{instruction}"""

_DIRECT = {
    "pairwise": "Which response is better according to the criteria? Answer with a single letter, A or B.",
    "pointwise": "How well does the response meet the criteria, from 1 (very poorly) to 10 (perfectly)? "
    "Answer with a single number.",
}
_COT = {
    "pairwise": "Think briefly about both responses (two or three sentences), "
    "then end with 'Verdict: A' or 'Verdict: B'.",
    "pointwise": "Think briefly about the response (two or three sentences), then end with 'Verdict: <1-10>'.",
}
VERDICT_CUE = "\nVerdict:"


def as_text(value: Any) -> str:
    """A prompt or completion (string or message list) as plain text for the judge's prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        if len(value) == 1:
            return str(value[0].get("content", ""))
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in value)
    return str(value)


def choice_log_probs(
    model: torch.nn.Module, contexts: Sequence[Sequence[int]], choices: Sequence[Sequence[int]], batch_size: int = 8
) -> torch.Tensor:
    """``log P(choice | context)`` for every context and choice, shape ``[len(contexts), len(choices)]``.

    A choice may span several tokens; its probability is the product of its tokens' conditional
    probabilities. When one choice is a prefix of another ("1" and "10"), the shorter one also
    multiplies in the probability of NOT continuing into a longer choice, so the two do not share
    probability mass. The values are unnormalised: their ``exp`` sums to the mass the judge puts
    on valid answers (at most 1).
    """
    choices = [tuple(c) for c in choices]
    if any(not c for c in choices) or len(set(choices)) != len(choices):
        raise ConfigError("judge answer choices must be distinct and non-empty token sequences")
    # Every prefix at which a next-token distribution is needed.
    queries = sorted({c[:k] for c in choices for k in range(len(c))} | {c for c in choices if _extended(c, choices)})
    query_index = {q: i for i, q in enumerate(queries)}
    rows = [list(ctx) + list(q) for ctx in contexts for q in queries]
    device = next(model.parameters()).device
    logps = []
    for start in range(0, len(rows), batch_size):
        logps.append(_last_token_log_probs(model, rows[start : start + batch_size], device))
    table = torch.cat(logps).view(len(contexts), len(queries), -1)  # [B, Q, vocab]
    out = torch.zeros(len(contexts), len(choices))
    for j, c in enumerate(choices):
        for k, token in enumerate(c):
            out[:, j] += table[:, query_index[c[:k]], token]
        if _extended(c, choices):
            next_tokens = sorted({d[len(c)] for d in choices if len(d) > len(c) and d[: len(c)] == c})
            p_continue = table[:, query_index[c], next_tokens].exp().sum(-1).clamp(max=1 - 1e-6)
            out[:, j] += torch.log1p(-p_continue)
    return out


def _extended(c: tuple, choices: Sequence[tuple]) -> bool:
    return any(len(d) > len(c) and d[: len(c)] == c for d in choices)


@torch.no_grad()
def _last_token_log_probs(model: torch.nn.Module, rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Log-softmax of the next-token logits after each row (rows are left-padded so the last column is real)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = position_ids_from_mask(mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()


@dataclass
class PairJudgement:
    """Pairwise verdicts for pairs (a, b). ``p_ab``: P(slot A wins) with a shown as A; ``p_ba``: with b as A."""

    p_ab: torch.Tensor
    p_ba: torch.Tensor | None
    choice_mass: torch.Tensor  # probability the judge put on the answer tokens, averaged over orders
    reasoning: list[list[str]] | None = None  # chain of thought per pair, one per order

    @property
    def prob_a(self) -> torch.Tensor:
        """P(a is better): ``(p_ab + 1 − p_ba) / 2``, independent of the order the pair came in."""
        return self.p_ab if self.p_ba is None else (self.p_ab + 1 - self.p_ba) / 2

    @property
    def consistent(self) -> torch.Tensor:
        """True where both orders pick the same response (a hard verdict survives the swap)."""
        if self.p_ba is None:
            return torch.ones_like(self.p_ab, dtype=torch.bool)
        return (self.p_ab > 0.5) == (self.p_ba < 0.5)

    @property
    def uncertainty(self) -> torch.Tensor:
        """Std of the two order-specific estimates of P(a better): half their difference."""
        if self.p_ba is None:
            return torch.zeros_like(self.p_ab)
        return (self.p_ab - (1 - self.p_ba)).abs() / 2

    def position_stats(self) -> dict[str, float]:
        """``position_bias_rate``: share of pairs whose verdict flips with the order;
        ``first_slot_rate``: mean P(slot A wins) over both orders (0.5 for an unbiased judge)."""
        if self.p_ba is None:
            return {}
        return {
            "position_bias_rate": float((~self.consistent).float().mean()),
            "first_slot_rate": float(torch.cat([self.p_ab, self.p_ba]).mean()),
        }


@dataclass
class RatingJudgement:
    """Pointwise ratings: ``probs[i, k]`` = P(rating k + 1)."""

    probs: torch.Tensor
    choice_mass: torch.Tensor
    reasoning: list[str] | None = None

    @property
    def expected(self) -> torch.Tensor:
        scale = torch.arange(1, self.probs.shape[1] + 1, dtype=torch.float32)
        return self.probs @ scale

    @property
    def std(self) -> torch.Tensor:
        scale = torch.arange(1, self.probs.shape[1] + 1, dtype=torch.float32)
        return (self.probs @ scale**2 - self.expected**2).clamp(min=0).sqrt()


class LLMJudge:
    """A causal LM judging pairs (``compare``) or single responses (``rate``); also a reward source."""

    supports_uncertainty = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        mode: str = "pairwise",
        criteria: str = DEFAULT_CRITERIA,
        swap_order: bool = True,
        chain_of_thought: bool = False,
        cot_max_tokens: int = 96,
        batch_size: int = 8,
        max_length: int = 1536,
        name: str = "judge",
    ):
        if mode not in ("pairwise", "pointwise"):
            raise ConfigError(f"judge mode: expected 'pairwise' or 'pointwise', got {mode!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mode = mode
        self.criteria = criteria
        self.swap_order = swap_order
        self.chain_of_thought = chain_of_thought
        self.cot_max_tokens = cot_max_tokens
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name

    @classmethod
    def from_model(cls, model_name: str | Path, **options: Any) -> "LLMJudge":
        model = load_causal_lm(model_name, trainable=False)
        options.setdefault("name", Path(str(model_name)).name or str(model_name))
        return cls(model, load_tokenizer(model_name), **options)

    @property
    def source(self) -> str:
        return f"ai:{self.name}"

    # --- prompting -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, user_text: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": user_text}]
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            rendered = user_text + "\n"
        ids = self._encode(rendered)
        return ids[-self.max_length :]  # keep the question and the answer slot when a request is very long

    def _choice_ids(self, labels: list[str]) -> list[list[int]]:
        # After the verdict cue ("Verdict:") the answer follows a space; directly after the header it does not.
        prefix = " " if self.chain_of_thought else ""
        return [self._encode(prefix + label) for label in labels]

    def _contexts(self, user_texts: list[str]) -> tuple[list[list[int]], list[str] | None]:
        prompts = [self._prompt_ids(text) for text in user_texts]
        if not self.chain_of_thought:
            return prompts, None
        sampler = HFSampler(self.model, self.tokenizer, batch_size=self.batch_size, dtype="fp32")
        rollout = sampler.generate(prompts, max_new_tokens=self.cot_max_tokens, temperature=0.0, stop="Verdict")
        reasoning = [text.strip() for text in rollout.responses]
        contexts = [p + self._encode(r + VERDICT_CUE) for p, r in zip(prompts, reasoning)]
        return contexts, reasoning

    def _instruction(self) -> str:
        return (_COT if self.chain_of_thought else _DIRECT)[self.mode]

    # --- judging ---------------------------------------------------------------------------
    def _slot_a_probs(self, prompts, first, second, criteria) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        texts = [
            PAIRWISE_TEMPLATE.format(
                criteria=c, prompt=as_text(p), a=as_text(x), b=as_text(y), instruction=self._instruction()
            )
            for p, x, y, c in zip(prompts, first, second, criteria)
        ]
        contexts, reasoning = self._contexts(texts)
        logp = choice_log_probs(self.model, contexts, self._choice_ids(["A", "B"]), self.batch_size)
        return torch.softmax(logp, -1)[:, 0], logp.exp().sum(-1), reasoning

    def compare(
        self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any], criteria: Sequence[str] | str | None = None
    ) -> PairJudgement:
        """Judge each pair (a[i], b[i]); ``criteria`` may differ per pair (a constitution principle each)."""
        if not len(prompts) == len(a) == len(b):
            raise ConfigError(f"judge.compare: got {len(prompts)} prompts, {len(a)} and {len(b)} responses")
        crit = _per_item(criteria, self.criteria, len(prompts))
        p_ab, mass_ab, why_ab = self._slot_a_probs(prompts, a, b, crit)
        if not self.swap_order:
            return PairJudgement(p_ab, None, mass_ab, [[w] for w in why_ab] if why_ab else None)
        p_ba, mass_ba, why_ba = self._slot_a_probs(prompts, b, a, crit)
        reasoning = [[x, y] for x, y in zip(why_ab, why_ba)] if why_ab else None
        return PairJudgement(p_ab, p_ba, (mass_ab + mass_ba) / 2, reasoning)

    def rate(
        self, prompts: Sequence[Any], completions: Sequence[Any], criteria: Sequence[str] | str | None = None
    ) -> RatingJudgement:
        """A distribution over ratings 1..10 for each completion."""
        crit = _per_item(criteria, self.criteria, len(prompts))
        texts = [
            POINTWISE_TEMPLATE.format(
                criteria=c, prompt=as_text(p), response=as_text(r), instruction=self._instruction()
            )
            for p, r, c in zip(prompts, completions, crit)
        ]
        contexts, reasoning = self._contexts(texts)
        logp = choice_log_probs(self.model, contexts, self._choice_ids(RATING_CHOICES), self.batch_size)
        return RatingJudgement(torch.softmax(logp, -1), logp.exp().sum(-1), reasoning)

    # --- reward-source protocol ---------------------------------------------------------------
    def _judge_as_reward(self, prompts, completions, fields) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "pointwise":
            rating = self.rate(prompts, completions)
            return rating.expected, rating.std
        reference = fields.get("reference")
        if reference is None:
            raise ConfigError("a pairwise judge used as a reward needs a 'reference' completion in each prompt record")
        verdict = self.compare(prompts, completions, reference)
        return verdict.prob_a, verdict.uncertainty

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        return self._judge_as_reward(prompts, completions, fields)[0]

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        """Pointwise: std of the rating distribution; pairwise: disagreement between the two orders."""
        return self._judge_as_reward(prompts, completions, fields)[1]

    def __repr__(self) -> str:
        return f"LLMJudge({self.name!r}, mode={self.mode!r})"


def _per_item(criteria: Sequence[str] | str | None, default: str, n: int) -> list[str]:
    if criteria is None or isinstance(criteria, str):
        return [criteria or default] * n
    if len(criteria) != n:
        raise ConfigError(f"judge: got {len(criteria)} criteria for {n} items")
    return list(criteria)
