"""Regional ``torch.compile`` of a transformer's training forward (``train.compile: blocks``).

Each decoder layer's attention, MLP and norm modules are compiled in place (``nn.Module.compile``), so the
repeated layers share one compiled graph per module kind and the state-dict keys do not change. Whole layers
are not compiled: under gradient checkpointing transformers' layer wrapper mutates a context variable,
which makes dynamo fall back to eager for the checkpointed region (measured with torch 2.13). Changing
shapes (RL and DPO batches differ in length from step to step) give one more compile with symbolic shapes,
not one per length.
"""

from __future__ import annotations

import shutil

from torch import nn

from alignloop.errors import AlignloopError

__all__ = ["COMPILED_BLOCKS", "compile_blocks"]

# class-name endings of the modules compiled (Llama, Qwen, Mistral, SmolLM... and their vision towers)
COMPILED_BLOCKS = ("Attention", "MLP", "RMSNorm")


def _check_cpu_compiler() -> None:
    if not any(shutil.which(name) for name in ("g++", "clang++", "c++")):
        raise AlignloopError(
            "train.compile: blocks needs a C++ compiler (g++ or clang++) on PATH: torch.compile's CPU backend "
            "builds its kernels with it. Install one, or set train.compile: off")


def compile_blocks(model: nn.Module, device_type: str) -> int:
    """Compile ``model``'s attention, MLP and norm modules in place; return how many were compiled."""
    if device_type == "cpu":
        _check_cpu_compiler()
    compiled = 0
    for module in model.modules():
        if type(module).__name__.endswith(COMPILED_BLOCKS) and not _already_compiled(module):
            module.compile()
            compiled += 1
    return compiled


def _already_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
