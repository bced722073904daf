"""``--torch_compile``: an objective's backbones compiled in place with ``torch.compile``.

``nn.Module.compile()`` replaces only how a module is called: its parameters, buffers and ``state_dict`` keys stay
what they were, so checkpoints, resume and every export are unchanged. The backbones are the modules held under an
attribute named ``backbone`` anywhere in the objective (the objective's own, each ``Encoder``'s -- CLIP's two
towers --, an EMA teacher's ``teacher["backbone"]``); they carry most of a step's FLOPs, while the objectives'
own code (masking, gathers, losses) changes shape from batch to batch and is left eager.
"""
from __future__ import annotations

from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")


def backbones(objective: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module under an attribute named ``backbone`` in ``objective``, each module once
    (one shared by the objective and its encoder is listed under its first name), none inside another listed."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in objective.named_modules():
        if name.rsplit(".", 1)[-1] == "backbone" and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def compile_backbones(objective: nn.Module, backend: str = "inductor", mode: str | None = None) -> list[str]:
    """Compile every backbone of ``objective`` in place (``nn.Module.compile``); returns their names."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown torch.compile backend {backend!r}; choose from {', '.join(BACKENDS)}")
    found = backbones(objective)
    for _, module in found:
        module.compile(backend=backend, mode=mode)
    return [name for name, _ in found]


__all__ = ["BACKENDS", "backbones", "compile_backbones"]
