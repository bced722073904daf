"""What the speech objective tests share: tiny models with weights moved off their init, a padded batch, and a
closeness check that names what differs."""
from __future__ import annotations

import torch

from selfsup.objectives.masking import compute_span_mask

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


def jitter(obj: torch.nn.Module) -> torch.nn.Module:
    """Every weight moved away from its init (so that every weight matters), in eval mode."""
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return obj.eval()


def audio_overrides(stable: bool) -> dict:
    """No feature-projection dropout; an odd position-conv kernel for the stable variant (the other branch of
    the same-pad trim)."""
    return {"feat_proj_dropout": 0.0, **({"num_conv_pos_embeddings": 15} if stable else {})}


def padded_batch(obj, seed: int = 0, mask_prob: float = 0.5,
                 min_masks: int = 2) -> tuple[dict, torch.Tensor, torch.Generator]:
    """Three waveforms of 4000 samples, the second zero-padded after 2500, and a fixed span mask:
    (batch, frame padding mask, the generator, to draw more from)."""
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(3, 4000, generator=g)
    attention = torch.ones(3, 4000, dtype=torch.long)
    attention[1, 2500:] = 0
    wav[attention == 0] = 0.0
    padding = obj.adapter.frame_padding_mask(attention, obj.adapter.feature_lengths(4000))
    mask = compute_span_mask(padding.shape, mask_prob, 5, (~padding).sum(1), min_masks, g)
    return {"input_values": wav, "attention_mask": attention, "mask_time_indices": mask}, padding, g


def assert_close(ours, ref, what: str, atol: float = 1e-4) -> float:
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"{what}: max difference {diff:.3g}"
    return diff
