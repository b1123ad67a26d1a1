"""The environment protocol of multi-turn rollouts, and the tool-call format the policy writes.

An environment runs one episode per sampled response:

* ``reset(record) -> messages``: the chat messages the episode starts from (a system message that describes the
  tools, then the prompt record's prompt as the user turn);
* ``step(action_text) -> (messages, reward, done)``: the text of one assistant turn in; out come the messages to
  append (the tool results, as ``tool`` role messages), the reward of this step and whether the episode is over.

Tool calls follow the Hermes / Qwen convention that chat templates with tool support render (and that
transformers' ``apply_chat_template(tools=...)`` targets): the assistant writes

    <tool_call>{"name": "calculator", "arguments": {"expression": "(13 + 16) * 5"}}</tool_call>

and the result comes back as a ``{"role": "tool", "content": "145"}`` message. A template without tool support
(SmolLM2's) renders any role as ``<|im_start|>tool\\n145<|im_end|>``; the tool is then described in the system
message (``tool_system_prompt``). ``docs/tools.md`` has the details.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)

__all__ = [
    "Environment",
    "Message",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCall",
    "format_tool_call",
    "parse_tool_call",
    "tool_system_prompt",
]


@runtime_checkable
class Environment(Protocol):
    """One episode at a time; a fresh instance (or ``reset``) per sampled response."""

    def reset(self, record: dict) -> list[Message]: ...

    def step(self, action_text: str) -> tuple[list[Message], float, bool]: ...


@dataclass(frozen=True)
class ToolCall:
    """A parsed ``<tool_call>`` block; ``error`` says why it could not be parsed (the name is then ""); ``raw`` is
    the text between the tags, for tools that can read a call that is not quite JSON (``CalculatorEnv``)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str = ""


def parse_tool_call(text: str) -> ToolCall | None:
    """The first ``<tool_call>{json}</tool_call>`` in ``text``; None when the text has no closed tool call."""
    match = _TOOL_CALL.search(text)
    if match is None:
        return None
    raw = match.group(1).strip()
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ToolCall("", error=f"the tool call is not JSON ({exc.msg})", raw=raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return ToolCall("", error='the tool call needs {"name": ..., "arguments": {...}}', raw=raw)
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(payload["name"], error="the arguments are not a JSON object", raw=raw)
    if not isinstance(arguments, dict):
        return ToolCall(payload["name"], error="the arguments are not a JSON object", raw=raw)
    return ToolCall(payload["name"], arguments, raw=raw)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text of a tool call as the policy should write it (used in prompts, docs and scripted tests)."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{TOOL_CALL_CLOSE}"


def tool_system_prompt(description: str, example: str) -> str:
    """A system message that describes a tool for templates without tool support (SmolLM2's)."""
    return (f"You can use a tool. {description} To call it, write exactly {example} and stop; the result comes back "
            f"in a tool message. When you know the answer, reply without a tool call.")
