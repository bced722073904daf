"""Checks on an autograd graph that a run-to-run comparison cannot make reliably.

On a multi-threaded CPU the backward of advanced indexing (``IndexBackward0``, i.e. ``index_put_`` with
accumulate) adds float values with atomic adds. When an index repeats, the order of those adds, and so the last
bits of the gradient, depends on thread timing: two identical runs on a loaded machine train different models.
A test of an objective asserts its loss graph has no such node (``index_select`` / ``gather`` are fine).
"""
from __future__ import annotations

import torch


def nodes(root) -> list:
    """Every node of the backward graph under ``root`` (a grad_fn)."""
    seen, stack, out = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return out


def racy_gathers(loss: torch.Tensor) -> list[str]:
    """Names of the indexing nodes under ``loss`` whose index holds a repeated entry (their backward races)."""
    bad = []
    for node in nodes(loss.grad_fn):
        if type(node).__name__ != "IndexBackward0":
            continue
        for index in node._saved_indices:
            if index is None or index.dtype == torch.bool:      # a mask selects each element once
                continue
            if index.numel() != index.unique().numel():
                bad.append(f"{type(node).__name__} over an index of {index.numel()} entries, "
                           f"{index.numel() - index.unique().numel()} repeated")
    return bad
