"""Helpers the speech recipes (wav2vec 2.0, HuBERT, data2vec audio) call, each one step of their ``main``, on typed
settings (:class:`SpeechRun`): the audio flags, the data sets, the training flags on a built objective, the linear
probe on labelled audio (FSDD-style names, or the synthetic corpus' words), and the export check and model card.
Nothing here calls back into a recipe."""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from selfsup.backbones.transformer import num_parameters
from selfsup.config import RecipeSettings
from selfsup.data import make_train_loader
from selfsup.errors import SelfsupError
from selfsup.evaluate import extract_views, knn_accuracy, linear_probe
from selfsup.modalities.audio import check_grad_mult
from selfsup.modalities.audio_corpora import fsdd_entries, fsdd_split, synthetic_speech_corpus
from selfsup.modalities.audio_data import AudioDataset, collate_audio, load_audio_splits, to_entries
from selfsup.modalities.shards import AudioStream
from selfsup.streaming import record_index, stream_loader
from selfsup.run import random_init_encoders
from selfsup.types import Encoder, Objective


@dataclass
class SpeechRun(RecipeSettings):
    """What the speech recipes share: the run's settings and the flags of :func:`add_audio_args` (with the data
    flags they read); a recipe's own settings extend it. The flags of the same names."""

    validation_split_percentage: float = 10.0
    audio_column: str | None = None
    max_duration: float = 4.0
    min_duration: float = 0.25
    on_bad_audio: str = "error"
    eval_dir: str | None = None
    eval_split: str = "official"
    max_eval_clips: int = 64
    synthetic_utterances: int = 400
    feature_grad_mult: float = 1.0
    layerdrop: float | None = None
    activation_dropout: float | None = None


def add_audio_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("audio")
    g.add_argument("--audio_column", default=None, help="audio column of a --dataset_name folder")
    g.add_argument("--max_duration", type=float, default=4.0, help="seconds; longer clips are cropped")
    g.add_argument("--min_duration", type=float, default=0.25, help="seconds; shorter clips are skipped")
    g.add_argument("--on_bad_audio", default="error", choices=["error", "skip"],
                   help="a corrupt, empty or non-audio file stops the run (error) or is skipped and counted")
    g.add_argument("--eval_dir", default=None,
                   help="labelled audio named {label}_{speaker}_{take}.wav (FSDD) for the linear probe")
    g.add_argument("--eval_split", default="official",
                   help="'official' (takes 0-4 test), 'loso', 'speaker:NAME', or several, comma-separated")
    g.add_argument("--max_eval_clips", type=int, default=64, help="held-out clips for the validation loss")
    g.add_argument("--synthetic_utterances", type=int, default=400,
                   help="size of the built-in synthetic corpus used when no audio is given")
    g.add_argument("--feature_grad_mult", type=float, default=1.0,
                   help="scale the gradient reaching the conv feature encoder (fairseq's base recipes: 0.1; "
                        "0 freezes it)")
    g.add_argument("--layerdrop", type=float, default=None,
                   help="skip each Transformer layer with this probability in training (fairseq's base recipes: "
                        "0.05); default: 0 for a new model, the checkpoint's with --init_from")
    g.add_argument("--activation_dropout", type=float, default=None,
                   help="dropout after the MLP activation; default: 0 for a new model, the checkpoint's with "
                        "--init_from")


def load_audio(run: SpeechRun) -> tuple[AudioDataset, AudioDataset, str]:
    """(train, validation, source) from the audio flags (``--train_dir``, ``--train_file`` lists or files,
    ``--dataset_name``, else the synthetic corpus); ``--validation_split_percentage`` is held out."""
    return load_audio_splits(
        train_dir=run.train_dir, train_file=run.train_file, dataset_name=run.dataset_name,
        audio_column=run.audio_column, synthetic_utterances=run.synthetic_utterances,
        max_train_samples=run.max_train_samples, validation_percentage=run.validation_split_percentage,
        max_validation=run.max_eval_clips, max_duration=run.max_duration, min_duration=run.min_duration,
        on_bad_audio=run.on_bad_audio, seed=run.seed, streaming=run.streaming, shard_size=run.stream_shard_size)


def speech_loader(train, collate: Callable, run: SpeechRun, batch_size: int, accelerator, dataset=None):
    """The sharded training loader of a speech recipe, ``batch_size`` clips per process, grouped by the clip
    lengths of ``train``; ``dataset`` (default: ``train``) is what it loads (HuBERT: the clips with their labels).
    Streamed (an ``AudioStream``): each process reads its own shards of clips, in shard order (no length grouping:
    the lengths are not known before a clip is opened)."""
    if isinstance(train, AudioStream):
        if dataset is not None:
            raise SelfsupError("--streaming: this recipe's training set is more than the clips; train without it")
        return stream_loader(train.shards, train.read,
                             lambda entry, shard, pos, epoch: train.example(entry, epoch, record_index(shard, pos)),
                             collate, batch_size, accelerator, run.seed, run.stream_shuffle_chunk, train.source)
    return make_train_loader(train if dataset is None else dataset, collate, batch_size, accelerator.num_processes,
                             accelerator.process_index, run.seed, run.dataloader_num_workers, lengths=train.lengths)


def labelled_sets(run: SpeechRun) -> tuple[list, dict[str, list[tuple[str, list[int], list[int]]]]]:
    """(entries, protocols): labelled clips and, per protocol of ``--eval_split`` (comma-separated:
    ``official``, ``loso``, ``speaker:NAME``), its (name, train indices, test indices) splits. Without
    ``--eval_dir``: held-out words of the synthetic corpus, as the one protocol ``""`` (the figures' names have no
    protocol then)."""
    if run.eval_dir:
        clips = fsdd_entries(run.eval_dir)
        entries = to_entries(clips)
        index = {c.path: i for i, c in enumerate(clips)}
        protocols = {}
        for protocol in [p.strip() for p in run.eval_split.split(",") if p.strip()]:
            names = [f"speaker:{s}" for s in sorted({c.speaker for c in clips})] if protocol == "loso" else [protocol]
            splits = []
            for name in names:
                train, test = fsdd_split(clips, name)
                splits.append((name, [index[c.path] for c in train], [index[c.path] for c in test]))
            protocols[protocol] = splits
        if not protocols:
            raise SelfsupError("--eval_split names no split (official, loso or speaker:NAME)")
        return entries, protocols
    n = max(20, min(200, run.synthetic_utterances // 2))
    train = synthetic_speech_corpus(n, seed=100)
    test = synthetic_speech_corpus(n // 2, seed=101)  # other speakers, same words
    entries = to_entries(train + test)
    return entries, {"": [("synthetic", list(range(n)), list(range(n, n + n // 2)))]}


def features(encoder: Encoder, data: AudioDataset, batch_size: int, device) -> dict[str, np.ndarray]:
    """Mean-pooled ``last`` hidden state and ``all_layers`` concatenated, of every clip."""
    def batches() -> Iterable[dict[str, Any]]:
        for i in range(0, len(data), batch_size):
            yield collate_audio([data[j] for j in range(i, min(i + batch_size, len(data)))])

    return extract_views(encoder, batches(), device, ("last", "all_layers"))


def audio_probe(encoders: dict[str, Encoder | list[Encoder]], run: SpeechRun, device) -> dict[str, float]:
    """Linear probe and kNN accuracy for each encoder (``{"": trained, "random_init_": [fresh, ...]}``; a list
    gives the mean over its encoders), averaged over each protocol's splits, each figure once: on ``--eval_dir``
    named by protocol, ``probe/{protocol}/accuracy``, ``knn/{protocol}/random_init_accuracy``,
    ``probe/{protocol}/all_layers/accuracy`` (every layer's mean-pooled output concatenated), ...; on the
    synthetic words (no ``--eval_dir``) ``probe/accuracy``, ``knn/accuracy``, ``probe/all_layers/accuracy``, ...
    ``probe/splits``: the splits scored."""
    entries, protocols = labelled_sets(run)
    data = AudioDataset(entries, max_duration=run.max_duration, min_duration=0.0, random_crop=False,
                        on_bad_audio=run.on_bad_audio, source=run.eval_dir or "synthetic probe data")
    if len(data) != len(entries):
        raise SelfsupError(f"{run.eval_dir}: {data.skipped}; the probe needs every labelled clip")
    labels = np.array([e.label for e in entries])
    out: dict[str, float] = {}
    for prefix, group in encoders.items():
        runs: list[dict[str, float]] = []
        for enc in ([group] if isinstance(group, torch.nn.Module) else group):
            views = features(enc, data, run.per_device_eval_batch_size, device)
            x, deep = views["last"], views["all_layers"]
            figures: dict[str, float] = {}
            for protocol, splits in protocols.items():
                scope = f"{protocol}/" if protocol else ""
                probe = [linear_probe(x[tr], labels[tr], x[te], labels[te]) for _, tr, te in splits]
                knn = [knn_accuracy(x[tr], labels[tr], x[te], labels[te]) for _, tr, te in splits]
                every = [linear_probe(deep[tr], labels[tr], deep[te], labels[te]) for _, tr, te in splits]
                figures[f"probe/{scope}{prefix}accuracy"] = float(np.mean(probe))
                figures[f"knn/{scope}{prefix}accuracy"] = float(np.mean(knn))
                figures[f"probe/{scope}all_layers/{prefix}accuracy"] = float(np.mean(every))
            runs.append(figures)
        out.update({k: float(np.mean([r[k] for r in runs])) for k in runs[0]})
    out["probe/splits"] = sum(len(s) for s in protocols.values())
    return out


def speech_probe(objective: Objective, run: SpeechRun, build: Callable[[], Objective], device) -> dict[str, float]:
    """:func:`audio_probe` of the trained encoder beside ``--random_init_seeds`` freshly built ones (none when
    continuing a checkpoint, ``--init_from``, whose random init would be another architecture's)."""
    references = {} if run.init_from else {
        "random_init_": random_init_encoders(build, run.random_init_seeds, run.seed, device)}
    return audio_probe({"": objective.encoder(), **references}, run, device)


def export_sample(val: AudioDataset) -> dict[str, Any]:
    """Two held-out clips as a padded batch, for the export check."""
    return collate_audio([val[i] for i in range(min(2, len(val)))])


def check_audio_export(objective: Objective, reloaded_encoder: Callable[..., Any], sample: dict,
                       metrics: dict[str, Any]) -> None:
    """Compare our encoder's last hidden state with the reloaded export's at the real frames (1e-4); records
    ``export/max_abs_hidden_diff``. ``reloaded_encoder(input_values, attention_mask=...)`` is the transformers
    model (or its base model) that ``from_pretrained`` gave back."""
    with torch.no_grad():
        ours, padding = objective.encoder()(sample)
        theirs = reloaded_encoder(sample["input_values"], attention_mask=sample["attention_mask"]).last_hidden_state
    real = ~padding if padding is not None else torch.ones(theirs.shape[:2], dtype=torch.bool)
    diff = float((ours.last_hidden_state - theirs)[real].abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"export check failed: reloaded hidden states differ by {diff:.2e}")
    metrics["export/max_abs_hidden_diff"] = diff


def speech_card(run: SpeechRun, objective: Objective, metrics: dict[str, Any], source: str, *, name: str,
                usage_class: str, tags: tuple[str, ...], facts: dict | None = None, encoder_of: str = ""
                ) -> dict[str, Any]:
    """The keyword arguments of ``write_model_card`` for a speech export (what was trained on what, usage;
    ``facts``: more of the run's facts for the card; ``encoder_of``: the attribute of ``usage_class`` that is the
    encoder, e.g. ``wav2vec2`` of ``Wav2Vec2ForPreTraining``, whose quantizer the encoder class would not load)."""
    out = Path(run.output_dir) / "export"
    card_facts = {"objective": name, "audio": source, "steps": metrics.get("steps"),
                  "model_size": run.model_size if not run.init_from else f"from {run.init_from}",
                  "parameters": num_parameters(objective.encoder()), "mask_prob": objective.masker.mask_prob,
                  **(facts or {})}
    where = run.hub_model_id or out
    usage = f"""from transformers import AutoFeatureExtractor, {usage_class}
extractor = AutoFeatureExtractor.from_pretrained("{where}")
model = {usage_class}.from_pretrained("{where}"){"." + encoder_of if encoder_of else ""}
inputs = extractor(waveform_16khz, sampling_rate=16000, return_tensors="pt")
hidden = model(**inputs).last_hidden_state"""
    return dict(title=run.hub_model_id or f"{name} encoder pretrained with selfsup", pipeline_tag="feature-extraction",
                summary=f"A {name} model pretrained on {source}.", metrics=metrics, run=card_facts, usage=usage,
                tags=tags)


def apply_training_flags(objective: Objective, run: SpeechRun, accelerator) -> None:
    """``--feature_grad_mult``, ``--activation_dropout`` and ``--layerdrop`` on the built objective; with
    layerdrop in a multi-process run, DDP is told that a step may leave skipped layers without a gradient."""
    try:
        check_grad_mult(run.feature_grad_mult)
        objective.backbone.set_regularization(run.activation_dropout, run.layerdrop)
    except ValueError as err:
        raise SelfsupError(str(err)) from None
    objective.adapter.config.feature_grad_mult = run.feature_grad_mult
    if run.feature_grad_mult == 0:                     # a frozen encoder: no gradient, not DDP's to reduce
        objective.adapter.conv_layers.requires_grad_(False)
    if objective.backbone.config.layerdrop > 0 and accelerator.num_processes > 1:
        from accelerate.utils import DistributedDataParallelKwargs

        handler = getattr(accelerator, "ddp_handler", None) or DistributedDataParallelKwargs()
        handler.find_unused_parameters = True
        accelerator.ddp_handler = handler


__all__ = ["SpeechRun", "add_audio_args", "load_audio", "speech_loader", "labelled_sets", "audio_probe",
           "speech_probe", "export_sample", "check_audio_export", "speech_card", "apply_training_flags"]
