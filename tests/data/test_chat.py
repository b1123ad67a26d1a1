"""Chat-template tokenisation: exact token ids, loss masks checked by decoding, prompt/completion splits."""

from __future__ import annotations

import copy

import pytest

from alignloop.data import (
    tokenize_conversation,
    tokenize_prompt,
    tokenize_prompt_completion,
)
from alignloop.errors import ModelError

# Llama-3 style: bos, special header tokens, a default system prompt only when none is given, trimmed contents.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = 'Cutting Knowledge Date: 2023' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Zephyr style: plain-text role tags (several ordinary tokens each), eos ends every turn.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Not append-only: earlier assistant turns lose their reasoning, only the last one keeps it.
REASONING_TEMPLATE = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and not loop.last %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2(tiny_tokenizer):
    """The bundled SmolLM2 tokenizer (tiny-llama's)."""
    return tiny_tokenizer


def _with_template(tokenizer, template: str, special_tokens: tuple[str, ...] = ()):
    tokenizer = copy.deepcopy(tokenizer)
    if special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module", params=["smollm2", "llama3", "zephyr"])
def templated(request, smollm2):
    """(tokenizer, end-of-turn text) for three different chat templates."""
    if request.param == "smollm2":
        return smollm2, "<|im_end|>"
    if request.param == "llama3":
        specials = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        return _with_template(smollm2, LLAMA3_TEMPLATE, specials), "<|eot_id|>"
    return _with_template(smollm2, ZEPHYR_TEMPLATE), "<|im_end|>"  # SmolLM2's eos is <|im_end|>


def _trained_segments(tokenizer, example) -> list[str]:
    """Decode each maximal run of loss-masked tokens."""
    segments, run = [], []
    for token, trained in zip(example.input_ids + [None], example.loss_mask + [0]):
        if trained:
            run.append(token)
        elif run:
            segments.append(tokenizer.decode(run))
            run = []
    return segments


def _template_ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, return_dict=True, **kwargs)["input_ids"]


MULTI_TURN = [
    {"role": "system", "content": "You are a cheerful guide."},
    {"role": "user", "content": "What is a haiku?"},
    {"role": "assistant", "content": "A haiku is a short poem of three lines with five, seven and five syllables."},
    {"role": "user", "content": "Write one about tea."},
    {"role": "assistant", "content": "Steam curls from the cup,\nquiet leaves unfold,\nmorning finds its pace."},
]


@pytest.mark.parametrize("with_system", [True, False])
def test_loss_mask_covers_exactly_assistant_turns(templated, with_system):
    tokenizer, end_of_turn = templated
    messages = MULTI_TURN if with_system else MULTI_TURN[1:]
    example = tokenize_conversation(tokenizer, messages)
    assert example.input_ids == _template_ids(tokenizer, messages)
    assert _trained_segments(tokenizer, example) == [
        MULTI_TURN[2]["content"] + end_of_turn,
        MULTI_TURN[4]["content"] + end_of_turn,
    ]


def test_trimming_template_trains_the_rendered_text(smollm2):
    tokenizer = _with_template(smollm2, LLAMA3_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello there!  \n"}]
    example = tokenize_conversation(tokenizer, messages)
    assert example.input_ids == _template_ids(tokenizer, messages)
    assert _trained_segments(tokenizer, example) == ["Hello there!<|eot_id|>"]


def test_template_that_rewrites_earlier_turns(smollm2):
    tokenizer = _with_template(smollm2, REASONING_TEMPLATE)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>two and two</think>It is 4."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>three and three</think>It is 6."},
    ]
    example = tokenize_conversation(tokenizer, messages)
    assert example.input_ids == _template_ids(tokenizer, messages)
    # The first answer is rendered without its reasoning, so only what is rendered is trained.
    assert _trained_segments(tokenizer, example) == [
        "It is 4.<|im_end|>",
        "<think>three and three</think>It is 6.<|im_end|>",
    ]


def test_max_length_truncates_from_the_right(smollm2):
    full = tokenize_conversation(smollm2, MULTI_TURN)
    cut = tokenize_conversation(smollm2, MULTI_TURN, max_length=20)
    assert cut.input_ids == full.input_ids[:20]
    assert cut.loss_mask == full.loss_mask[:20]


def test_prompt_completion_split(templated):
    tokenizer, end_of_turn = templated
    prompt, completion = MULTI_TURN[:4], MULTI_TURN[4:]
    prompt_ids, completion_ids = tokenize_prompt_completion(tokenizer, prompt, completion)
    assert prompt_ids == _template_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _template_ids(tokenizer, MULTI_TURN)
    if end_of_turn == "<|eot_id|>":
        # SmolLM2's pre-tokenizer reads the header's "\n\n" as one token at the end of the prompt but as two
        # before text, so the joint tokens cannot split; the generation prompt's tokens are kept instead.
        assert full_ids[: len(prompt_ids)] != prompt_ids
        assert tokenizer.decode(prompt_ids + completion_ids) == tokenizer.decode(full_ids)
    else:
        assert prompt_ids + completion_ids == full_ids
    assert tokenizer.decode(completion_ids).startswith(completion[0]["content"] + end_of_turn)
    assert tokenize_prompt(tokenizer, prompt) == prompt_ids


def test_prompt_completion_truncation(smollm2):
    prompt, completion = MULTI_TURN[:4], MULTI_TURN[4:]
    prompt_ids, completion_ids = tokenize_prompt_completion(smollm2, prompt, completion)
    # Room left for the completion: it is cut from the right, the prompt is kept whole.
    limit = len(prompt_ids) + 5
    assert tokenize_prompt_completion(smollm2, prompt, completion, max_length=limit) == (prompt_ids, completion_ids[:5])
    # A prompt longer than max_length keeps its last max_length tokens and leaves no completion.
    assert tokenize_prompt_completion(smollm2, prompt, completion, max_length=10) == (prompt_ids[-10:], [])
    # max_prompt_length cuts the prompt from the left first, then the completion fills up to max_length.
    cut = tokenize_prompt_completion(smollm2, prompt, completion, max_length=30, max_prompt_length=20)
    assert cut == (prompt_ids[-20:], completion_ids[:10])
    assert tokenize_prompt(smollm2, prompt, max_length=7) == prompt_ids[-7:]


def test_prompt_completion_boundary_merge_keeps_generation_prompt(smollm2):
    # "assistant\n" + "  Sure" tokenises with "\n  " as one token, so the joint tokens do not split cleanly.
    prompt = [{"role": "user", "content": "Hi"}]
    completion = [{"role": "assistant", "content": "  Sure thing."}]
    prompt_ids, completion_ids = tokenize_prompt_completion(smollm2, prompt, completion)
    assert prompt_ids == _template_ids(smollm2, prompt, add_generation_prompt=True)
    full_text = smollm2.apply_chat_template(prompt + completion, tokenize=False)
    assert smollm2.decode(prompt_ids + completion_ids) == full_text


def test_inconsistent_generation_prompt_is_an_error(smollm2):
    broken = ZEPHYR_TEMPLATE.replace("'<|assistant|>\\n'", "'<|bot|>\\n'")
    tokenizer = _with_template(smollm2, broken)
    with pytest.raises(ModelError) as err:
        tokenize_prompt_completion(tokenizer, MULTI_TURN[:4], MULTI_TURN[4:])
    assert str(err.value) == (
        "the chat template renders the prompt differently with add_generation_prompt=True than inside the "
        "full conversation, so prompt and completion tokens cannot be split"
    )


def test_missing_chat_template_is_an_error(smollm2):
    tokenizer = copy.deepcopy(smollm2)
    tokenizer.chat_template = None
    tokenizer.name_or_path = "tiny-base"
    with pytest.raises(ModelError) as err:
        tokenize_conversation(tokenizer, MULTI_TURN)
    assert str(err.value) == (
        "tiny-base: the tokenizer has no chat template; set tokenizer.chat_template to a Jinja template"
    )
