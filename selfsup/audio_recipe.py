"""What the speech recipes (wav2vec 2.0, HuBERT, data2vec) share: audio flags, data sets, held-out evaluation
with fixed masks, and the linear probe on labelled audio (FSDD-style names, or the synthetic corpus' words)."""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any, Iterable

import numpy as np
import torch

from selfsup.data import to_device
from selfsup.errors import SelfsupError
from selfsup.evaluate import extract_features, knn_accuracy, linear_probe
from selfsup.modalities.audio_corpora import fsdd_entries, fsdd_split, synthetic_entries, synthetic_speech_corpus
from selfsup.modalities.audio_data import AudioDataset, collate_audio, find_audio, to_entries
from selfsup.types import Encoder, Objective


def add_audio_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("audio")
    g.add_argument("--audio_column", default=None, help="audio column of a --dataset_name folder")
    g.add_argument("--max_duration", type=float, default=4.0, help="seconds; longer clips are cropped")
    g.add_argument("--min_duration", type=float, default=0.25, help="seconds; shorter clips are skipped")
    g.add_argument("--on_bad_audio", default="error", choices=["error", "skip"],
                   help="a corrupt, empty or non-audio file stops the run (error) or is skipped and counted")
    g.add_argument("--eval_dir", default=None,
                   help="labelled audio named {label}_{speaker}_{take}.wav (FSDD) for the linear probe")
    g.add_argument("--eval_split", default="official", help="'official' (takes 0-4 test), 'loso' or 'speaker:NAME'")
    g.add_argument("--max_eval_clips", type=int, default=64, help="held-out clips for the validation loss")
    g.add_argument("--synthetic_utterances", type=int, default=400,
                   help="size of the built-in synthetic corpus used when no audio is given")


def load_audio_data(args: Namespace) -> tuple[AudioDataset, AudioDataset, str]:
    """(train, validation, source): the user's audio (``--train_dir``, ``--train_file`` lists or files,
    ``--dataset_name``) or the synthetic corpus; ``--validation_split_percentage`` is held out."""
    if args.train_dir or args.train_file or args.dataset_name:
        entries = find_audio(train_dir=args.train_dir, file_list=args.train_file, dataset_name=args.dataset_name,
                             audio_column=args.audio_column)
    else:
        entries = synthetic_entries(args.synthetic_utterances)
    source = args.train_dir or (args.train_file and args.train_file[0]) or args.dataset_name or "builtin:synthetic"
    if args.max_train_samples:
        entries = entries[: args.max_train_samples]
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(entries), generator=g).tolist()
    n_val = min(args.max_eval_clips, max(1, int(len(entries) * args.validation_split_percentage / 100)))
    if len(entries) < 2:
        raise SelfsupError(f"{source}: needs at least two audio clips")
    common = dict(max_duration=args.max_duration, min_duration=args.min_duration, seed=args.seed,
                  on_bad_audio=args.on_bad_audio)
    val = AudioDataset([entries[i] for i in order[:n_val]], random_crop=False, source=f"{source} (validation)",
                       **common)
    train = AudioDataset([entries[i] for i in order[n_val:]], random_crop=True, source=source, **common)
    return train, val, source


def held_out_eval(val: AudioDataset, batch_size: int, seed: int, device: torch.device):
    """An ``eval_fn`` giving the objective's loss and metrics on ``val`` with masks fixed by ``seed``."""

    def eval_fn(objective: Objective) -> dict[str, float]:
        total, count, sums = 0.0, 0, {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(val), batch_size):
                batch = to_device(collate_audio([val[j] for j in range(i, min(i + batch_size, len(val)))]), device)
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


def labelled_sets(args: Namespace) -> tuple[list, list[tuple[str, list[int], list[int]]]]:
    """(entries, splits): labelled clips and (name, train indices, test indices) splits for the probe."""
    if args.eval_dir:
        clips = fsdd_entries(args.eval_dir)
        entries = to_entries(clips)
        names = ["official"] if args.eval_split == "official" else (
            [f"speaker:{s}" for s in sorted({c.speaker for c in clips})] if args.eval_split == "loso"
            else [args.eval_split])
        splits = []
        for name in names:
            train, test = fsdd_split(clips, name)
            index = {c.path: i for i, c in enumerate(clips)}
            splits.append((name, [index[c.path] for c in train], [index[c.path] for c in test]))
        return entries, splits
    n = max(20, min(200, args.synthetic_utterances // 2))
    train = synthetic_speech_corpus(n, seed=100)
    test = synthetic_speech_corpus(n // 2, seed=101)  # other speakers, same words
    entries = to_entries(train + test)
    return entries, [("synthetic", list(range(n)), list(range(n, n + n // 2)))]


def features(encoder: Encoder, data: AudioDataset, batch_size: int, device) -> np.ndarray:
    def batches() -> Iterable[dict[str, Any]]:
        for i in range(0, len(data), batch_size):
            yield collate_audio([data[j] for j in range(i, min(i + batch_size, len(data)))])

    return extract_features(encoder, batches(), device)


def audio_probe(encoders: dict[str, Encoder], args: Namespace, device) -> dict[str, float]:
    """Linear probe and kNN accuracy for each encoder (``{"": trained, "random_init_": fresh}``), averaged over
    the splits (``probe/accuracy``, ``probe/random_init_accuracy``, ``knn/...``)."""
    entries, splits = labelled_sets(args)
    data = AudioDataset(entries, max_duration=args.max_duration, min_duration=0.0, random_crop=False,
                        on_bad_audio=args.on_bad_audio, source=args.eval_dir or "synthetic probe data")
    if len(data) != len(entries):
        raise SelfsupError(f"{args.eval_dir}: {data.skipped}; the probe needs every labelled clip")
    labels = np.array([e.label for e in entries])
    out: dict[str, float] = {}
    for prefix, enc in encoders.items():
        x = features(enc, data, args.per_device_eval_batch_size, device)
        probe, knn = [], []
        for _, tr, te in splits:
            probe.append(linear_probe(x[tr], labels[tr], x[te], labels[te]))
            knn.append(knn_accuracy(x[tr], labels[tr], x[te], labels[te]))
        out[f"probe/{prefix}accuracy"] = float(np.mean(probe))
        out[f"knn/{prefix}accuracy"] = float(np.mean(knn))
    out["probe/splits"] = len(splits)
    return out

