"""``MultiTurnSampler``: a scripted episode's token mask (tool output in the context, out of the loss), the
budget and turn limits, and sampler log-probs equal to a fresh forward over the whole multi-turn sequence."""

from __future__ import annotations

import pytest
import torch

from alignloop.envs import CalculatorEnv, MultiTurnSampler, format_tool_call, render_observation
from alignloop.rollout import HFSampler, Rollout, forward_logprobs
from tests.conftest import tiny_llama

EOS = 2  # <|im_end|>


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedSampler:
    """A ``Sampler`` test double: call ``k`` answers every row with ``turns[k]`` (text; ``<eos>`` = EOS token)."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer, self.turns, self.calls = tokenizer, turns, []

    def generate(self, prompts, n=1, max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, stop=None, seed=None):
        text = self.turns[len(self.calls)]
        self.calls.append([list(p) for p in prompts])
        eos = text.endswith("<eos>")
        ids = self.tokenizer(text.removesuffix("<eos>"), add_special_tokens=False)["input_ids"] + ([EOS] if eos else [])
        ids = ids[:max_new_tokens]
        rows = len(prompts)
        response = torch.tensor([ids] * rows)
        return Rollout(
            prompt_ids=torch.zeros(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
            response_ids=response, response_mask=torch.ones_like(response),
            logprobs=torch.full(response.shape, -0.5), ended_with_eos=torch.full((rows,), eos),
            ended_with_stop=torch.full((rows,), text.endswith("</tool_call>")), prompts=list(prompts),
            responses=[text] * rows, group_index=torch.arange(rows),
        )


CALL = "I will compute it. " + format_tool_call("calculator", {"expression": "(13 + 16) * 5"})
RECORD = {"prompt": "What is (13 + 16) * 5? End your answer with '#### <number>'.", "answer": "145"}


def test_scripted_episode_masks_the_tool_output(tokenizer):
    sampler = MultiTurnSampler(ScriptedSampler(tokenizer, [CALL, "So #### 145<eos>"]), tokenizer, CalculatorEnv, 4)
    rollout = sampler.generate([RECORD["prompt"]], n=2, max_new_tokens=128, records=[RECORD])
    assert rollout.responses == ["So #### 145"] * 2
    ids, action, real = rollout.response_ids[0], rollout.action_mask[0].bool(), rollout.response_mask[0].bool()
    inserted = ids[real & ~action]
    assert tokenizer.decode(inserted) == "<|im_end|>\n<|im_start|>tool\n145<|im_end|>\n<|im_start|>assistant\n"
    tool_turn = "<|im_end|>\n<|im_start|>tool\n145<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids[real]) == CALL + tool_turn + "So #### 145<|im_end|>"
    # layout: generated call | inserted tool turn | generated answer, one contiguous context
    n_call = len(tokenizer(CALL, add_special_tokens=False)["input_ids"])
    assert action[:n_call].all() and not action[n_call: n_call + len(inserted)].any() and action[real].sum() > n_call
    assert torch.equal(rollout.trained_mask, rollout.action_mask)
    assert (rollout.logprobs[0][real & ~action] == 0).all() and (rollout.logprobs[0][action] == -0.5).all()
    assert bool(rollout.ended_with_eos[0]) and rollout.finished.all()
    # the second turn's context = the prompt with the system message + the whole first turn and the tool output
    second_context = sampler.sampler.calls[1][0]
    prompt = rollout.prompt_ids[0][rollout.prompt_mask[0].bool()].tolist()
    assert second_context == prompt + ids[real][: n_call + len(inserted)].tolist()
    assert sampler.metrics() == {"env/turns_mean": 2.0, "env/tool_calls_mean": 1.0, "env/tool_errors": 0.0,
                                 "env/reward_mean": 1.0}
    assert rollout.select([1]).action_mask.shape == (1, rollout.response_ids.shape[1])


def test_rendered_tool_turn_follows_the_chat_template(tokenizer):
    text = render_observation(tokenizer, [{"role": "tool", "content": "145"}], turn_ended_with_eos=False)
    assert text == "<|im_end|>\n<|im_start|>tool\n145<|im_end|>\n<|im_start|>assistant\n"
    assert render_observation(tokenizer, [{"role": "tool", "content": "1"}], turn_ended_with_eos=True).startswith(
        "\n<|im_start|>tool\n1")


def test_max_turns_ends_an_episode_with_an_unanswered_call(tokenizer):
    sampler = MultiTurnSampler(ScriptedSampler(tokenizer, [CALL, CALL]), tokenizer, CalculatorEnv, max_turns=2)
    rollout = sampler.generate([RECORD["prompt"]], n=1, max_new_tokens=256, records=[RECORD])
    assert len(sampler.sampler.calls) == 2 and not rollout.finished.any()
    assert sampler.metrics()["env/turns_mean"] == 2 and sampler.metrics()["env/tool_calls_mean"] == 2
    assert sampler.metrics()["env/reward_mean"] == 0.0
    # the last call's tool output is not appended: the response ends with the generated call
    assert tokenizer.decode(rollout.response_ids[0][rollout.response_mask[0].bool()]).endswith("</tool_call>")


def test_token_budget_cuts_the_episode(tokenizer):
    n_call = len(tokenizer(CALL, add_special_tokens=False)["input_ids"])
    sampler = MultiTurnSampler(ScriptedSampler(tokenizer, [CALL, "#### 145<eos>"]), tokenizer, CalculatorEnv, 4)
    rollout = sampler.generate([RECORD["prompt"]], n=1, max_new_tokens=n_call + 3, records=[RECORD])
    assert int(rollout.response_mask.sum()) == n_call and not rollout.finished.any()  # no room for the tool turn
    assert len(sampler.sampler.calls) == 1


class EchoEnv:
    """Every turn gets a tool message back and the episode never ends by itself: all turns are multi-turn."""

    tool_calls = tool_errors = 0

    def reset(self, record):
        return [{"role": "user", "content": record["prompt"]}]

    def step(self, action_text):
        return [{"role": "tool", "content": "result: 7"}], 0.0, False


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_a_fresh_forward_over_the_multi_turn_sequence(tokenizer, temperature):
    model = tiny_llama(0, bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # EOS comes up at random steps, so turns end and tool outputs get inserted
        model.lm_head.weight[EOS] = 6 * direction / direction.norm()
    sampler = MultiTurnSampler(HFSampler(model, tokenizer, batch_size=3, dtype="fp32"), tokenizer, EchoEnv, 3)
    rollout = sampler.generate(["hi", "what is two plus two?"], n=3, max_new_tokens=48, temperature=temperature,
                               seed=5)
    inserted = rollout.response_mask.bool() & ~rollout.action_mask.bool()
    assert inserted.any(axis=1).sum() >= 2, "the test needs episodes with inserted tool turns"
    assert sampler.metrics()["env/turns_mean"] > 1
    with torch.no_grad():
        fresh = forward_logprobs(model, rollout, temperature=temperature)
    mask = rollout.action_mask.bool()
    torch.testing.assert_close(fresh[mask], rollout.logprobs[mask], atol=1e-4, rtol=0)
    again = sampler.generate(["hi", "what is two plus two?"], n=3, max_new_tokens=48, temperature=temperature, seed=5)
    assert torch.equal(again.response_ids, rollout.response_ids)  # same seed, same episodes
