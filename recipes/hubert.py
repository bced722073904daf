"""Pretrain a HuBERT speech encoder on raw waveforms, one iteration per command (Hsu et al., 2021).

    accelerate launch recipes/hubert.py --iteration 1      # MFCC -> k-means -> labels -> pretrain (SYNTHETIC corpus)
    accelerate launch recipes/hubert.py --iteration 2      # layer of iteration 1's model -> k-means -> ... -> pretrain
    accelerate launch recipes/hubert.py --iteration 1 --train_dir my_audio/ --model_size small --max_steps 5000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso

Iteration 1 clusters MFCCs of the training clips (``--num_clusters``, 100 by default); iteration N > 1 clusters
``--feature_layer`` of the model that iteration N-1 wrote (``--previous``; by default the ``iteration{N-1}``
folder beside this one), 500 clusters by default. The k-means is fitted here, mini-batch, on at most
``--kmeans_max_frames`` training frames; every clip's labels are cached in OUTPUT_DIR/labels/ and reused when
the run is resumed or repeated on the same data and settings. Then the model is trained from scratch (or from
``--init_from``) to predict the cluster of masked frames.

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (``HubertModel`` + feature extractor + card, with the
pre-training head in ``hubert_head.safetensors`` and the k-means centroids in ``kmeans.safetensors``).
OUTPUT_DIR defaults to outputs/hubert/iteration{N}; a ``{iteration}`` in ``--output_dir`` is filled in.
"""
from __future__ import annotations

import shutil
from argparse import ArgumentParser
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from selfsup.backbones.hf_speech import feature_extractor_for
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.kmeans import load_centroids, save_centroids
from selfsup.modalities.audio import CONV_SIZES
from selfsup.modalities.audio_labels import (HubertCollator, LabelledAudio, LayerFeatures, MFCCFeatures, cached_labels,
                                             fingerprint, fit_centroids, label_clips, merge_label_parts,
                                             save_label_part, save_labels)
from selfsup.recipes.builders.clustering import hubert
from selfsup.objectives.clustering.hf_hubert import HEAD_KEYS, from_transformers, to_transformers
from selfsup.objectives.clustering.hubert import HubertObjective
from selfsup.recipes._speech import (SpeechRun, add_audio_args, apply_training_flags, check_audio_export,
                                     export_sample, load_audio, speech_card, speech_loader, speech_probe)
from selfsup.run import finish_run, held_out_eval, start_run
from selfsup.train import Trainer, TrainingSettings

OBJECTIVE_FLAGS = ("mask_prob", "mask_length", "logit_temperature", "pred_masked_weight", "pred_nomask_weight",
                   "feature_penalty_weight", "final_dim")
HEAD_FILE, KMEANS_FILE = "hubert_head.safetensors", "kmeans.safetensors"


@dataclass
class HubertRun(SpeechRun):
    """The HuBERT recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names.
    :func:`resolve` fills in what depends on the iteration. :data:`OBJECTIVE_FLAGS` go to the objective as given
    (None: the size's default)."""

    output_dir: str = "outputs/hubert/iteration{iteration}"
    iteration: int = 1
    previous: str | None = None
    feature_layer: int | None = None
    num_clusters: int | None = None
    kmeans_max_frames: int = 500_000
    kmeans_iterations: int = 100
    kmeans_batch_size: int = 10_000
    stable_layer_norm: bool = False
    mask_prob: float = 0.8
    mask_length: int = 10
    logit_temperature: float = 0.1
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    feature_penalty_weight: float = 0.0
    final_dim: int | None = None
    dropout: float = 0.1


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/hubert/iteration{iteration}", max_steps=200,
                    learning_rate=5e-4, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                    warmup_ratio=0.08, validation_split_percentage=10.0)
    add_audio_args(p)
    g = p.add_argument_group("HuBERT iteration and k-means targets")
    g.add_argument("--iteration", type=int, default=1, help="1: cluster MFCCs; N > 1: cluster a layer of N-1's model")
    g.add_argument("--previous", default=None,
                   help="iteration N-1's output folder or export (default: iteration{N-1} beside OUTPUT_DIR)")
    g.add_argument("--feature_layer", type=int, default=None,
                   help="layer of the previous model to cluster (default: HuBERT base's 6 of 12 in iteration 2, "
                        "9 of 12 later, scaled to the model's depth)")
    g.add_argument("--num_clusters", type=int, default=None, help="k (default: 100 in iteration 1, 500 after)")
    g.add_argument("--kmeans_max_frames", type=int, default=500_000, help="training frames the k-means is fitted on")
    g.add_argument("--kmeans_iterations", type=int, default=100, help="mini-batches of the k-means fit")
    g.add_argument("--kmeans_batch_size", type=int, default=10_000, help="frames per k-means mini-batch")
    h = p.add_argument_group("HuBERT objective")
    h.add_argument("--stable_layer_norm", action="store_true", help="pre-LN Transformer (HuBERT large style)")
    h.add_argument("--mask_prob", type=float, default=0.8)
    h.add_argument("--mask_length", type=int, default=10)
    h.add_argument("--logit_temperature", type=float, default=0.1)
    h.add_argument("--pred_masked_weight", type=float, default=1.0, help="weight of the loss at masked frames")
    h.add_argument("--pred_nomask_weight", type=float, default=0.0, help="... and at unmasked frames")
    h.add_argument("--feature_penalty_weight", type=float, default=0.0)
    h.add_argument("--final_dim", type=int, default=None, help="width of the projection (default: by size)")
    h.add_argument("--dropout", type=float, default=0.1, help="Transformer and feature-projection dropout")
    return p


def resolve(run: HubertRun) -> HubertRun:
    """The settings with the iteration-dependent defaults filled in (output folder, previous model, layer, k),
    checked: a new :class:`HubertRun`."""
    if run.iteration < 1:
        raise SelfsupError("--iteration must be at least 1")
    output_dir = str(run.output_dir).replace("{iteration}", str(run.iteration))
    num_clusters = run.num_clusters if run.num_clusters is not None else (100 if run.iteration == 1 else 500)
    if num_clusters < 2:
        raise SelfsupError("--num_clusters must be at least 2")
    previous, feature_layer = run.previous, run.feature_layer
    if run.iteration > 1:
        if previous is None:
            previous = str(Path(output_dir).parent / f"iteration{run.iteration - 1}")
        prev = Path(previous)
        export = prev / "export" if (prev / "export" / "config.json").is_file() else prev
        if not (export / "config.json").is_file():
            raise SelfsupError(f"{previous}: no model of iteration {run.iteration - 1} here (run iteration "
                               f"{run.iteration - 1} first, or pass --previous DIR)")
        previous = str(export)
        from transformers import AutoConfig

        depth = AutoConfig.from_pretrained(previous, trust_remote_code=False).num_hidden_layers
        if feature_layer is None:
            feature_layer = max(1, round(depth * (0.5 if run.iteration == 2 else 0.75)))
        if not 0 <= feature_layer <= depth:
            raise SelfsupError(f"--feature_layer {feature_layer}: the previous model has layers 0..{depth}")
    return replace(run, output_dir=output_dir, num_clusters=num_clusters, previous=previous,
                   feature_layer=feature_layer)


def geometry(run: HubertRun) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv kernels, conv strides) of the model being trained, for label alignment and batching."""
    if run.init_from:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(run.init_from, trust_remote_code=False)
        return tuple(cfg.conv_kernel), tuple(cfg.conv_stride)
    cfg = CONV_SIZES[run.model_size]
    return tuple(cfg["conv_kernel"]), tuple(cfg["conv_stride"])


def build_objective(run: HubertRun) -> HubertObjective:
    settings = {k: getattr(run, k) for k in OBJECTIVE_FLAGS if getattr(run, k) is not None}
    if run.init_from:
        head = Path(run.init_from) / HEAD_FILE
        use_head = head.is_file() and _head_clusters(head) == run.num_clusters
        return from_transformers(run.init_from, head=head if use_head else None,
                                 num_clusters=None if use_head else run.num_clusters, dropout=run.dropout,
                                 **settings)
    backbone = dict(dropout=run.dropout, attention_dropout=run.dropout,
                    gradient_checkpointing=run.gradient_checkpointing)
    return hubert(run.model_size, num_clusters=run.num_clusters, stable_layer_norm=run.stable_layer_norm,
                 backbone=backbone, audio={"feat_proj_dropout": run.dropout}, **settings)


def _head_clusters(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.get_slice("label_embeddings").get_shape()[0])
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise SelfsupError(f"{path}: not a HuBERT head ({err})") from None


def file_digest(path: Path) -> str:
    """sha256 of a file: retraining the previous iteration (same size, new weights) must redo the labels."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def label_source(run: HubertRun, device) -> MFCCFeatures | LayerFeatures:
    if run.iteration == 1:
        return MFCCFeatures()
    previous = from_transformers(run.previous, num_clusters=2)      # the encoder is all that is used
    return LayerFeatures(previous, run.feature_layer, run.max_duration, device=device)


def together(accelerator, step: Callable[[], Any]) -> Any:
    """Run ``step`` on this process, then learn whether it failed on any: if so, every process stops (with its
    own error, or the other's as a one-line :class:`SelfsupError`) instead of waiting at a barrier for ever."""
    error = None
    try:
        result = step()
    except Exception as err:  # noqa: BLE001 - re-raised below, on every process
        error, result = err, None
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        said = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
    else:
        said = [None]
    if error is not None:
        raise error
    if failed := [(rank, msg) for rank, msg in enumerate(said) if msg]:
        raise SelfsupError(f"cluster labels failed on process {failed[0][0]}: {failed[0][1]}")
    return result


def make_labels(run: HubertRun, data: dict[str, Any], keys: dict[str, str], cache: Path, accelerator) -> None:
    """Cluster labels into ``cache``: the main process fits k-means and writes the centroids; every process
    labels its share of the clips (every N-th); the main process merges the shares into one file per split.
    A failure in any step on any process stops all of them."""
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    source = together(accelerator, lambda: label_source(run, accelerator.device))
    kept: dict = {}
    meta: dict[str, Any] = {}

    def fit() -> None:
        if not main:
            return
        accelerator.print(f"cluster labels: k-means ({run.num_clusters} clusters) on {source.description} "
                          f"features of the training clips")
        centroids, inertia, fitted, features = fit_centroids(data["train"], source, run.num_clusters,
                                                             run.kmeans_max_frames, run.kmeans_iterations,
                                                             run.kmeans_batch_size, run.seed)
        kept.update(features)
        meta.update({"label_rate": source.rate, "features": source.description, "num_clusters": run.num_clusters,
                     "kmeans_inertia": inertia, "kmeans_frames": fitted})
        cache.mkdir(parents=True, exist_ok=True)
        save_centroids(cache / KMEANS_FILE, centroids, {k: str(v) for k, v in meta.items()})

    def label_my_share() -> None:
        centroids = load_centroids(cache / KMEANS_FILE)   # every process labels with the same float32 copy
        for split, dataset in data.items():
            mine = range(rank, len(dataset), world)
            rows = label_clips(dataset, source, source.num_positions, centroids, mine,
                               kept=kept if split == "train" else None, progress=main)
            save_label_part(parts / f"{split}.{rank}.safetensors", mine, rows)

    def merge() -> None:
        if not main:
            return
        for split, dataset in data.items():
            files = [parts / f"{split}.{r}.safetensors" for r in range(world)]
            save_labels(cache / f"{split}.safetensors", merge_label_parts(files, len(dataset)),
                        {**meta, "fingerprint": keys[split]})
        shutil.rmtree(parts, ignore_errors=True)

    parts = cache / "parts"
    for step in (fit, label_my_share, merge):
        together(accelerator, step)


def attach_labels(run: HubertRun, train, val, kernels, strides, accelerator, metrics: dict[str, Any]):
    """Cluster labels for the training and held-out clips (made by :func:`make_labels`, or read from
    OUTPUT_DIR/labels/ when the cache fits), attached to the clips as :class:`LabelledAudio`; the k-means
    figures go into ``metrics``."""
    cache = Path(run.output_dir) / "labels"
    settings = {"iteration": run.iteration, "num_clusters": run.num_clusters, "seed": run.seed,
                "previous": run.previous, "feature_layer": run.feature_layer,
                "kmeans": [run.kmeans_max_frames, run.kmeans_iterations, run.kmeans_batch_size],
                "max_duration": run.max_duration}
    if run.previous:
        weights = Path(run.previous) / "model.safetensors"
        settings["previous_weights"] = file_digest(weights) if weights.is_file() else None
    keys = {"train": fingerprint(train, settings), "validation": fingerprint(val, settings)}
    found = [accelerator.is_main_process
             and all(cached_labels(cache / f"{split}.safetensors", key) for split, key in keys.items())]
    if accelerator.num_processes > 1:                  # every process acts on the main process's finding
        from accelerate.utils import broadcast_object_list

        found = broadcast_object_list(found)
    found = bool(found[0])
    metrics["kmeans/cached"] = float(found)
    if found:
        accelerator.print(f"cluster labels: reusing {cache}")
    else:
        make_labels(run, {"train": train, "validation": val}, keys, cache, accelerator)
    accelerator.wait_for_everyone()
    loaded = {split: cached_labels(cache / f"{split}.safetensors", key) for split, key in keys.items()}
    if not all(loaded.values()):
        raise SelfsupError(f"{cache}: the cluster labels were not written")
    meta = loaded["train"][1]
    metrics.update({"kmeans/inertia": meta["kmeans_inertia"], "kmeans/frames": meta["kmeans_frames"],
                    "kmeans/features": meta["features"]})
    used = torch.cat([r[r >= 0] for r in loaded["train"][0]])
    if len(used):
        p = torch.bincount(used, minlength=run.num_clusters).double() / len(used)
        metrics["kmeans/label_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return (LabelledAudio(train, loaded["train"][0], meta["label_rate"], kernels, strides),
            LabelledAudio(val, loaded["validation"][0], meta["label_rate"], kernels, strides))


def export(objective: HubertObjective, run: HubertRun, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export: HubertModel + feature extractor + head + centroids + card, reloaded and checked."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    objective, out = objective.float().cpu().eval(), Path(run.output_dir) / "export"
    to_transformers(objective).save_pretrained(str(out))
    feature_extractor_for(objective).save_pretrained(str(out))
    state = objective.state_dict()
    save_file({k: state[k].contiguous() for k in HEAD_KEYS}, str(out / HEAD_FILE))
    shutil.copyfile(Path(run.output_dir) / "labels" / KMEANS_FILE, out / KMEANS_FILE)
    check_audio_export(objective, AutoModel.from_pretrained(str(out)).eval(), sample, metrics)
    card = speech_card(run, objective, metrics, source, name="HuBERT", usage_class="HubertModel",
                       tags=("hubert", "audio", "speech"),
                       facts={"iteration": run.iteration,
                              "targets": f"k-means ({run.num_clusters}) on {metrics.get('kmeans/features')}"})
    card.update(title=run.hub_model_id or f"HuBERT encoder (iteration {run.iteration}) pretrained with selfsup",
                summary=f"A HuBERT model pretrained on {source}, iteration {run.iteration}.")
    write_model_card(out, **card)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                # parse
    run = resolve(settings_from(HubertRun, args))
    settings = TrainingSettings.from_args(args, output_dir=run.output_dir)
    accelerator = start_run(settings, run.seed)
    kernels, strides = geometry(run)
    if run.streaming:
        raise SelfsupError("--streaming: HuBERT's targets are k-means labels of every training clip, computed over the "
                           "whole set each iteration; train HuBERT without --streaming")
    train, val, source = load_audio(run)                                                   # data
    accelerator.print(f"audio: {source}: {len(train)} training clips, {len(val)} held out, "
                      f"{sum(train.durations) / 3600:.2f} h")
    objective = build_objective(run)                                                       # build
    apply_training_flags(objective, run, accelerator)
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.1f}M parameters")
    label_metrics: dict[str, Any] = {}                                                     # targets
    train_set, val_set = attach_labels(run, train, val, kernels, strides, accelerator, label_metrics)
    collate = HubertCollator(kernels, strides)
    eval_fn = held_out_eval(val_set, collate, run.per_device_eval_batch_size, run.seed, accelerator.device)
    loader = speech_loader(train, collate, run, settings.per_device_train_batch_size, accelerator, dataset=train_set)
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "hubert", "audio": source})
    metrics = {**trainer.train(), **train.skipped.as_dict(), **label_metrics}              # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:                                                        # evaluate
        metrics.update(speech_probe(objective, run, lambda: build_objective(run), accelerator.device))
        export_dir = export(objective, run, metrics, source, export_sample(val))           # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
