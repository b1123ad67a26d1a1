"""Multi-turn environments: the protocol and tool-call format (base.py), the calculator (calculator.py) and the
sampler that runs episodes (sampler.py). ``ENVIRONMENTS`` maps the names ``grpo.env`` takes to their classes."""

from alignloop.envs.base import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    Environment,
    ToolCall,
    format_tool_call,
    parse_tool_call,
)
from alignloop.envs.calculator import CalculatorEnv, CalculatorError, safe_eval
from alignloop.envs.sampler import MultiTurnSampler, render_observation

ENVIRONMENTS: dict[str, type] = {"calculator": CalculatorEnv}

__all__ = [
    "ENVIRONMENTS",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "CalculatorEnv",
    "CalculatorError",
    "Environment",
    "MultiTurnSampler",
    "ToolCall",
    "format_tool_call",
    "parse_tool_call",
    "render_observation",
    "safe_eval",
]
