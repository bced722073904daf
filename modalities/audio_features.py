"""Frame features and label alignment for HuBERT's first iteration (Hsu et al., 2021, arXiv:2106.07447).

HuBERT's first targets are k-means clusters of 39-dimensional MFCCs at 100 Hz: 13 cepstra + deltas + delta-
deltas, exactly as fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` computes them
(``torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)`` - Kaldi defaults:
25 ms Povey window, 10 ms shift, 23 mel bins, 13 cepstra, lifter 22, pre-emphasis 0.97, no dither, snip edges
- then ``torchaudio.functional.compute_deltas`` twice). These are pure-torch functions; nothing here decodes
audio (``selfsup.modalities.audio_data`` does, with soundfile).

The conv feature encoder makes one frame per 20 ms (50 Hz) while MFCC labels come at 100 Hz: :func:`align_labels`
resamples a label sequence to the model's frames.
"""
from __future__ import annotations

import torch
from torch import Tensor

MFCC_RATE = 100   # frames per second of the MFCC features (10 ms shift)
MODEL_RATE = 50   # frames per second of the base feature encoder at 16 kHz (320x downsampling)


def mfcc_features(waveform: Tensor, sample_rate: int = 16000, num_ceps: int = 13, num_mel_bins: int = 23,
                  frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, deltas: bool = True) -> Tensor:
    """(T,) mono waveform -> (F, 39) MFCCs, deltas and delta-deltas (F = 1 + (T - 400) // 160 at 16 kHz).

    Kaldi-compatible MFCCs as fairseq's HuBERT MFCC dump (``use_energy=False``: c0 is kept, no log-energy);
    ``deltas=False`` gives the (F, 13) cepstra only. Waveforms shorter than one window give (0, 39). Pass the
    waveform as decoded (floats in [-1, 1], as fairseq reads it), not the per-utterance normalised model input:
    the scale moves c0 and therefore the clusters.
    """
    from torchaudio.compliance import kaldi
    from torchaudio.functional import compute_deltas

    if waveform.dim() == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"mfcc_features needs one mono waveform (samples,); got shape {tuple(waveform.shape)}")
    dims = num_ceps * (3 if deltas else 1)
    if waveform.shape[0] < int(sample_rate * frame_length_ms / 1000):
        return waveform.new_zeros(0, dims, dtype=torch.float32)
    with torch.no_grad():
        mfcc = kaldi.mfcc(waveform.float()[None], sample_frequency=sample_rate, use_energy=False,
                          num_ceps=num_ceps, num_mel_bins=num_mel_bins, frame_length=frame_length_ms,
                          frame_shift=frame_shift_ms)                                  # (F, 13)
        if not deltas:
            return mfcc
        first = compute_deltas(mfcc.T)                                                   # (13, F), window 5
        second = compute_deltas(first)
        return torch.cat([mfcc.T, first, second], dim=0).T.contiguous()


def align_labels(labels: Tensor, num_frames: int, label_rate: float = MFCC_RATE, frame_rate: float = MODEL_RATE,
                 ignore_index: int = -100, start: float = 0.0) -> Tensor:
    """Resample frame labels (..., L) at ``label_rate`` Hz to (..., num_frames) at ``frame_rate`` Hz.

    Frame j (starting at start + j / frame_rate s, where ``start`` is where a crop begins in the labelled clip)
    takes the label whose start time is nearest: ``i = floor(start * label_rate + j * label_rate / frame_rate
    + 1/2)``. For an integer ratio this is fairseq's HuBERT
    (``target_inds = arange(F) * feat2tar_ratio``): 100 Hz labels -> every second label for 50 Hz frames,
    100 Hz -> 100 Hz unchanged. Frames past the last label get ``ignore_index`` (the objective does not score
    them); ``labels`` may hold ``ignore_index`` already (padding), which is carried over.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be non-negative, got {num_frames}")
    ratio = label_rate / frame_rate
    index = torch.floor(torch.arange(num_frames, dtype=torch.float64) * ratio + start * label_rate + 0.5)
    index = index.long().to(labels.device)
    inside = index < labels.shape[-1]
    picked = labels[..., index.clamp_max(max(labels.shape[-1] - 1, 0))] if labels.shape[-1] else \
        labels.new_full((*labels.shape[:-1], num_frames), ignore_index)
    return picked.masked_fill(~inside, ignore_index)


__all__ = ["mfcc_features", "align_labels", "MFCC_RATE", "MODEL_RATE"]
