"""The pictures the engine writes, drawn with matplotlib on its Agg canvas (no display needed, and no pyplot state
touched, so a notebook's backend stays as it was):

* the training curves of every run, ``OUTPUT_DIR/training_curves.png``: the loss at every optimizer step and each
  held-out figure at the steps it was evaluated, beside the numbers they were drawn from,
  ``OUTPUT_DIR/training_curves.json`` (``{"train/loss": {"steps": [...], "values": [...]}, "eval/...": ...}``);
* a confusion matrix (scikit-learn's ``ConfusionMatrixDisplay``), for ``selfsup.evaluate.confusion_png``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

CURVES_PNG = "training_curves.png"
CURVES_JSON = "training_curves.json"


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib ``Figure`` (inches) on an Agg canvas, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> str:
    """Write ``fig`` as a PNG at ``path`` (folders made), atomically; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)
    return str(out)


def curves(losses: Sequence[float], evaluations: Sequence[tuple[int, Mapping[str, Any]]]
           ) -> dict[str, dict[str, list]]:
    """The curve data of a run: ``train/loss`` at steps 1, 2, ... (``losses[i]`` is step ``i + 1``'s) and every
    numeric figure of the ``(step, figures)`` evaluations, each as ``{"steps": [...], "values": [...]}``."""
    out = {"train/loss": {"steps": list(range(1, len(losses) + 1)), "values": [float(v) for v in losses]}}
    for step, figures in evaluations:
        for key, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series = out.setdefault(key, {"steps": [], "values": []})
                series["steps"].append(int(step))
                series["values"].append(float(value))
    return out


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    return (c[idx] - c[np.maximum(idx - window, 0)]) / np.minimum(idx, window)


def draw_curves(data: Mapping[str, Mapping[str, Sequence]], title: str = ""):
    """One panel for the training loss (with ``eval/loss`` on the same axes when there is one) and one per other
    figure; a figure evaluated once is a single marker."""
    others = [k for k in data if k not in ("train/loss", "eval/loss")]
    cols = min(3, 1 + len(others))
    rows = math.ceil((1 + len(others)) / cols)
    width, height, top = 4.2 * cols, 3.0 * rows, 0.35 + 0.3 * bool(title)
    fig = new_figure(width, height, layout=None)   # fixed margins (inches): half the time of a layout engine
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - top / height,
                        wspace=0.3, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    loss = data["train/loss"]
    ax = axes[0]
    if loss["steps"]:
        ax.plot(loss["steps"], loss["values"], lw=0.8, alpha=0.45 if len(loss["steps"]) > 20 else 1.0,
                color="tab:blue", label="train/loss")
        if len(loss["steps"]) > 20:
            window = max(2, len(loss["steps"]) // 25)
            ax.plot(loss["steps"], running_mean(loss["values"], window), lw=1.6, color="tab:blue",
                    label=f"train/loss (mean of {window} steps)")
    if "eval/loss" in data:
        ax.plot(data["eval/loss"]["steps"], data["eval/loss"]["values"], "o-", color="tab:orange", label="eval/loss")
    ax.set_title("loss")
    ax.legend(fontsize="small")
    for ax, key in zip(axes[1:], others):
        ax.plot(data[key]["steps"], data[key]["values"], "o-", color="tab:green", ms=4)
        ax.set_title(key, fontsize="medium")
    for ax in axes[: 1 + len(others)]:
        ax.set_xlabel("step")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    for ax in axes[1 + len(others):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def write_training_curves(output_dir: str | Path, data: Mapping[str, Mapping[str, Sequence]],
                          title: str = "") -> str:
    """``OUTPUT_DIR/training_curves.json`` (the data) and ``OUTPUT_DIR/training_curves.png`` (the picture);
    returns the PNG's path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CURVES_JSON + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out / CURVES_JSON)
    return save_png(draw_curves(data, title), out / CURVES_PNG)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str = ""):
    """A confusion matrix (rows: true class, columns: predicted, counts in the cells) with scikit-learn's
    ``ConfusionMatrixDisplay``; the cells' numbers are left out past 30 classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    c = len(class_names)
    side = min(max(4.0, 0.45 * c + 2.0), 24.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=True, include_values=c <= 30, xticks_rotation="vertical")
    ax.set_title(title or "confusion (rows: true, columns: predicted)")
    return fig


__all__ = ["CURVES_PNG", "CURVES_JSON", "new_figure", "save_png", "curves", "running_mean", "draw_curves",
           "write_training_curves", "confusion_figure"]
