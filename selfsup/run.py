"""Small steps every recipe's ``main`` calls, top to bottom: start, random-init references, held-out
evaluation, finish (metrics.json, a summary a person reads, the Hub). No function here calls back into a
recipe; a recipe reads parse -> data -> build -> train -> evaluate -> export -> finish.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator

from selfsup.data import to_device
from selfsup.export import push_to_hub
from selfsup.train import TrainingSettings, make_accelerator, seed_everything, write_metrics
from selfsup.types import Encoder, Objective


def start_run(settings: TrainingSettings, seed: int) -> Accelerator:
    """The Accelerator for these settings, with Python, NumPy and torch seeded on every process."""
    accelerator = make_accelerator(settings)
    seed_everything(seed)
    return accelerator


def random_init_encoders(build: Callable[[], Objective], count: int, seed: int,
                         device: torch.device | str = "cpu") -> list[Encoder]:
    """``count`` freshly initialised encoders of the trained one's shape (seeds ``seed + 1``, ``seed + 2``,
    ...): the reference every probe figure is reported beside (their mean)."""
    fresh = []
    for k in range(max(1, count)):
        torch.manual_seed(seed + 1 + k)
        fresh.append(build().to(device).encoder())
    return fresh


def held_out_eval(examples: Sequence[Any], collate: Callable[[list[Any]], dict], batch_size: int, seed: int,
                  device: torch.device) -> Callable[[Objective], dict[str, float]]:
    """An ``eval_fn`` for the trainer: the objective's loss and metrics on held-out ``examples``, with the
    objective's random draws (masks, negatives) fixed by ``seed``, so every evaluation scores the same task.
    Figures are weighted by each batch's number of targets: ``eval/loss`` and ``eval/<metric>``."""

    def eval_fn(objective: Objective) -> dict[str, float]:
        total, count, sums = 0.0, 0, {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(examples), batch_size):
                batch = to_device(collate([examples[j] for j in range(i, min(i + batch_size, len(examples)))]),
                                  device)
                out = objective(batch)
                n = int(out.num_targets) if out.num_targets is not None else 1
                total += float(out.loss) if out.num_targets is not None else float(out.loss) * n
                count += n
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
        result = {"eval/loss": total / max(count, 1)}
        result.update({f"eval/{k}": v / max(count, 1) for k, v in sums.items()})
        return result

    return eval_fn


def summary(metrics: dict[str, Any], export_dir: Path | None, output_dir: str | Path) -> str:
    """A few lines a person reads at the end of a run: steps, held-out figures, every probe / kNN figure beside
    its random-init reference (and the paired gain with its 95 % interval where the probe gave one), and where the
    metrics, the training curves and the export are."""
    lines = [f"done: {metrics.get('steps')} steps on {metrics.get('num_processes')} process(es)"]
    keys = ["train_loss", "samples_per_second", *sorted(k for k in metrics if k.startswith("eval/"))]
    shown = [f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))]
    if shown:
        lines.append("  " + ", ".join(shown))
    own = [f"{k[len('train/'):]} {metrics[k]:.4g}" for k in sorted(metrics) if k.startswith("train/")
           and isinstance(metrics[k], (int, float))]
    if own:                                  # the objective's figures over the last logging window
        lines.append("  last steps: " + ", ".join(own))
    for key in sorted(k for k in metrics if k.endswith("/accuracy") and not k.startswith("eval/")):
        stem = key[: -len("accuracy")]
        ref, gain, ci = (metrics.get(stem + k) for k in ("random_init_accuracy", "gain", "gain_ci95"))
        paired = (f"; {gain * 100:+.1f} ± {ci * 100:.1f} points, 95 % over the test examples"
                  if isinstance(gain, (int, float)) and isinstance(ci, (int, float)) and ci == ci else "")
        against = f"   (random init {ref:.1%}{paired})" if isinstance(ref, (int, float)) else ""
        lines.append(f"  {key:<34} {metrics[key]:.1%}{against}")
    lines.append(f"  metrics: {Path(output_dir) / 'metrics.json'}")
    if metrics.get("training_curves"):
        lines.append(f"  curves:  {metrics['training_curves']}")
    for key in sorted(k for k in metrics if k.endswith("_png") and isinstance(metrics[k], str)):
        lines.append(f"  picture: {metrics[key]}")
    if export_dir is not None:
        lines.append(f"  export:  {export_dir}")
    return "\n".join(lines)


def finish_run(accelerator: Accelerator, metrics: dict[str, Any], output_dir: str | Path,
               export_dir: Path | None = None, hub_model_id: str | None = None, push: bool = False,
               private: bool = False) -> dict[str, Any]:
    """Write ``OUTPUT_DIR/metrics.json`` and print the summary (main process), end the trackers, push the
    export to the Hub when asked. Returns the metrics (with ``hub_url`` after a push)."""
    if accelerator.is_main_process:
        write_metrics(output_dir, metrics)
        accelerator.print(summary(metrics, export_dir, output_dir))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if push and accelerator.is_main_process and export_dir is not None:
        metrics["hub_url"] = push_to_hub(export_dir, hub_model_id, private)
        write_metrics(output_dir, metrics)
    return metrics


__all__ = ["start_run", "random_init_encoders", "held_out_eval", "summary", "finish_run"]
