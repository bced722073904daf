"""Optimizers for pretraining: LARS (You, Gitman & Ginsburg 2017), as SimCLR, BYOL and Barlow Twins train with it,
and ``make_optimizer``, which builds AdamW, SGD or LARS by name."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from selfsup.errors import SelfsupError

OPTIMIZERS = ("adamw", "sgd", "lars")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017, "Large Batch Training of Convolutional
    Networks", Algorithm 1), in the form of facebookresearch/barlowtwins' and BYOL's LARS.

    For each parameter tensor w with gradient g::

        u = g + weight_decay * w                                    # decay (unless excluded)
        u = u * trust_coefficient * ||w|| / (||u|| + eps)           # when ||w|| > 0 and ||u|| > 0 (unless excluded)
        buf = momentum * buf + u                                    # buf = u at the first step
        w = w - lr * buf

    ``exclude_bias_and_norm``: tensors with fewer than 2 dimensions (biases, norm scales) get neither the decay
    nor the trust ratio: plain SGD with momentum (SimCLR's and BYOL's setting). Every hyper-parameter may be set
    per param group. The momentum buffers are the optimizer state, so ``state_dict`` / ``load_state_dict`` resume
    a run exactly.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, exclude_bias_and_norm: bool = True):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("trust_coefficient", trust_coefficient), ("eps", eps)):
            if value < 0:
                raise ValueError(f"LARS: {name} must be >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, exclude_bias_and_norm=exclude_bias_and_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not (group["exclude_bias_and_norm"] and p.ndim < 2):
                    if group["weight_decay"] != 0:
                        update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = group["trust_coefficient"] * w_norm / (u_norm + group["eps"])
                    update = update * torch.where((w_norm > 0) & (u_norm > 0), trust, torch.ones_like(trust))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.detach().clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def make_optimizer(params_or_groups: Iterable[Any], name: str, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9, eps: float = 1e-8,
                   fused: bool | None = None, trust_coefficient: float = 0.001,
                   exclude_bias_and_norm: bool = True) -> torch.optim.Optimizer:
    """``name`` one of "adamw" (``betas``, ``eps``, ``fused``), "sgd" (``momentum``) or "lars" (``momentum``,
    ``eps``, ``trust_coefficient``, ``exclude_bias_and_norm``); ``weight_decay`` is the default of groups that
    do not set their own."""
    params = list(params_or_groups)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                    eps=eps, exclude_bias_and_norm=exclude_bias_and_norm)
    raise SelfsupError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


__all__ = ["LARS", "make_optimizer", "OPTIMIZERS"]
