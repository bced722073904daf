"""The predictive family's speech sizes (the image sizes are each method's own ``SIZES``, in ``cpc.py`` and
``deep_infomax.py``): per size the conv encoder, the latents' width and the objective's settings.

CPC on raw waveforms (van den Oord, Li & Vinyals, 2018, sec. 3.1): five conv layers of strides (5, 4, 2, 2, 2),
kernels (10, 8, 4, 4, 4), 512 channels, ReLU (160x: a latent every 10 ms at 16 kHz), a GRU of 256, 12 steps
predicted; Adam at 2e-4, 8 GPUs x 8 windows of 20480 samples. Here each conv layer has a LayerNorm over its channels
(frame by frame: a latent reads no frame outside its receptive field) and the latents are the conv output,
LayerNorm-ed and linearly projected (``AudioAdapter``'s projection) to ``hidden_size``; no position convolution and
no Transformer. base: the paper's; small: 256 channels; tiny: tests."""
from __future__ import annotations

from typing import Any

CPC_CONV = dict(conv_kernel=(10, 8, 4, 4, 4), conv_stride=(5, 4, 2, 2, 2), activation="relu", feat_extract_norm="layer",
                num_conv_pos_embeddings=0, feat_proj_dropout=0.0)
SPEECH_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(audio=dict(CPC_CONV, conv_dim=(32,) * 5), hidden_size=32,
                 objective=dict(context_dim=16, num_offsets=4)),
    "small": dict(audio=dict(CPC_CONV, conv_dim=(256,) * 5), hidden_size=256,
                  objective=dict(context_dim=256, num_offsets=12)),
    "base": dict(audio=dict(CPC_CONV, conv_dim=(512,) * 5), hidden_size=512,
                 objective=dict(context_dim=256, num_offsets=12)),
}


__all__ = ["CPC_CONV", "SPEECH_SIZES"]
