"""Audio: the wav2vec 2.0 adapter from raw waveforms to frame embeddings (Baevski et al., 2020, arXiv:2006.11477).

``embed``: a stack of strided 1-D convolutions (the *feature encoder*, about one frame per 20 ms at 16 kHz for
the base sizes), LayerNorm over the conv channels, a linear projection to the model width and dropout — the
LayerNorm-ed conv features are the targets the quantizer consumes. ``add_positions``: padded frames zeroed,
a weight-normed grouped convolution over time added as relative position information, then (post-LN models
only) LayerNorm, then dropout. Together they equal ``transformers``' ``Wav2Vec2FeatureEncoder`` +
``Wav2Vec2FeatureProjection`` + the part of ``Wav2Vec2Encoder`` / ``Wav2Vec2EncoderStableLayerNorm`` before
their layers. Loading and collating audio live in ``selfsup.modalities.audio_data``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from selfsup.backbones.transformer import ACTIVATIONS
from selfsup.dropout import Dropout
from selfsup.modalities.audio_conv import feature_encoder
from selfsup.types import Adapter, Batch, Tokens


# The conv feature encoder by size: tiny (tests; 80x, a frame per 5 ms at 16 kHz) and small / base (wav2vec 2.0's
# seven layers, 320x, a frame per 20 ms; 256 / 512 channels). The families' tables add their position embeddings.
_K7, _S7 = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
CONV_SIZES: dict[str, dict] = {
    "tiny": dict(conv_dim=(32,) * 5, conv_kernel=(10, 3, 3, 3, 2), conv_stride=(5, 2, 2, 2, 2)),
    "small": dict(conv_dim=(256,) * 7, conv_kernel=_K7, conv_stride=_S7),
    "base": dict(conv_dim=(512,) * 7, conv_kernel=_K7, conv_stride=_S7),
}


@dataclass
class AudioConfig:
    """The feature encoder and the convolutional position embedding (names as in ``Wav2Vec2Config``).

    feat_extract_norm: ``"group"`` (GroupNorm on the first conv layer only: wav2vec2-base) or ``"layer"``
    (LayerNorm after every conv layer: the large "stable layer norm" models).
    feature_grad_mult: scales the gradient that reaches the feature encoder (fairseq's ``feature_grad_mult``;
    0.1 in its wav2vec 2.0 and HuBERT base recipes, for stability); 0 runs the encoder without a gradient (a
    frozen encoder; the recipes also mark its parameters frozen). Training only, not part of an export.
    """

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    activation: str = "gelu"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    feat_proj_dropout: float = 0.1
    sampling_rate: int = 16000
    feature_grad_mult: float = 1.0

    def __post_init__(self) -> None:
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            tuple(int(v) for v in t) for t in (self.conv_dim, self.conv_kernel, self.conv_stride))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride need one entry per conv layer")
        check_grad_mult(self.feature_grad_mult)
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm is {self.feat_extract_norm!r}; choose 'group' or 'layer'")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_grad_mult(value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"feature_grad_mult must be a number >= 0, got {value}")


def scale_gradient(x: Tensor, mult: float) -> Tensor:
    """x unchanged; the gradient flowing back through it multiplied by ``mult``."""
    if mult != 1.0 and x.requires_grad:
        x.register_hook(lambda grad: grad * mult)
    return x


class ConvLayer(nn.Module):
    """Conv1d -> optional GroupNorm (one group per channel) or LayerNorm over channels -> activation.

    Holds the parameters (named as in ``transformers``); the adapter computes the stack with
    :func:`~selfsup.modalities.audio_conv.feature_encoder`. ``forward`` is the plain (B, C, T) definition.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None,
                 activation: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = (nn.GroupNorm(c_out, c_out) if norm == "group" else
                     nn.LayerNorm(c_out) if norm == "layer" else None)
        self.act = ACTIVATIONS[activation]
        nn.init.kaiming_normal_(self.conv.weight)
        if bias:
            k = math.sqrt(1 / (c_in * kernel))
            nn.init.uniform_(self.conv.bias, -k, k)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) -> (B, C_out, T')."""
        x = self.conv(x)
        if isinstance(self.norm, nn.LayerNorm):
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class ConvPositionalEmbedding(nn.Module):
    """wav2vec 2.0's relative position embedding: a weight-normed (over all but the kernel axis) grouped
    convolution over time with "same" padding (one frame dropped for even kernels), then the activation."""

    def __init__(self, hidden_size: int, kernel: int, groups: int, activation: str = "gelu") -> None:
        super().__init__()
        if hidden_size % groups:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_conv_pos_embedding_groups {groups}")
        conv = nn.Conv1d(hidden_size, hidden_size, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (kernel * hidden_size)))
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, :-self.trim]
        return self.act(y).transpose(1, 2)


class AudioAdapter(Adapter):
    """Raw waveforms -> frame embeddings (wav2vec 2.0 / HuBERT / data2vec audio).

    batch: ``input_values`` (B, T) float waveforms and optionally ``attention_mask`` (B, T), 1 = real sample
    (right padding). ``encoder_norm``: apply the encoder LayerNorm in ``add_positions`` (post-LN models such as
    wav2vec2-base); pre-LN ("stable layer norm") models have theirs after the last layer, in the backbone.
    """

    batch_keys = ("input_values", "attention_mask")

    def __init__(self, config: AudioConfig, hidden_size: int, dropout: float = 0.1, layer_norm_eps: float = 1e-5,
                 encoder_norm: bool = True) -> None:
        super().__init__()
        self.config, self.hidden_size = config, hidden_size
        dims = (1, *config.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], k, s, config.conv_bias,
                      "layer" if config.feat_extract_norm == "layer" else ("group" if i == 0 else None),
                      config.activation)
            for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride)))
        self.projection_norm = nn.LayerNorm(dims[-1], eps=layer_norm_eps)
        self.projection = nn.Linear(dims[-1], hidden_size)
        self.projection_dropout = Dropout(config.feat_proj_dropout)
        k = math.sqrt(1 / dims[-1])
        nn.init.uniform_(self.projection.weight, -k, k)
        nn.init.uniform_(self.projection.bias, -k, k)
        self.pos_conv = ConvPositionalEmbedding(hidden_size, config.num_conv_pos_embeddings,
                                                config.num_conv_pos_embedding_groups, config.activation) \
            if config.num_conv_pos_embeddings > 0 else None   # 0: no position conv (CPC: frames stay local)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if encoder_norm else None
        self.dropout = Dropout(dropout)

    def content_prefixes(self) -> tuple[str, ...]:
        return ("conv_layers.", "projection_norm.", "projection.")

    def position_prefixes(self) -> tuple[str, ...]:
        """The position convolution(s); the encoder LayerNorm counts as the Transformer's (fairseq's
        ``ema_layers_only`` averages it)."""
        return ("pos_conv.",)

    @property
    def feature_size(self) -> int:
        """C, the width of the conv features (``targets["features"]``)."""
        return self.config.conv_dim[-1]

    @property
    def receptive_field(self) -> int:
        """The fewest samples that give one frame."""
        field, jump = 1, 1
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            field, jump = field + (k - 1) * jump, jump * s
        return field

    def feature_lengths(self, lengths: Tensor | int) -> Tensor | int:
        """Frames the feature encoder makes of ``lengths`` samples: ``floor((L - k) / s) + 1`` per layer."""
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1 if isinstance(lengths, Tensor) \
                else (lengths - k) // s + 1
        return lengths.clamp_min(0) if isinstance(lengths, Tensor) else max(lengths, 0)

    def frame_padding_mask(self, attention_mask: Tensor, num_frames: int) -> Tensor:
        """(B, T) sample mask (1 = real) -> (B, F) bool, True at frames past each waveform's feature length."""
        lengths = self.feature_lengths(attention_mask.long().sum(dim=-1))
        return torch.arange(num_frames, device=attention_mask.device)[None, :] >= lengths[:, None]

    def conv_features(self, waveforms: Tensor) -> Tensor:
        """(B, T) -> (B, F, C) output of the conv stack (before any LayerNorm), computed by
        :func:`~selfsup.modalities.audio_conv.feature_encoder` (the same function as running the layers one by
        one, faster). The gradient reaching the encoder is scaled by ``config.feature_grad_mult``."""
        if waveforms.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples) raw waveforms; got shape {tuple(waveforms.shape)}")
        if waveforms.shape[1] < self.receptive_field:
            raise ValueError(f"waveforms of {waveforms.shape[1]} samples are shorter than the feature encoder's "
                             f"receptive field ({self.receptive_field} samples)")
        if self.config.feature_grad_mult == 0:
            with torch.no_grad():
                return feature_encoder(self.conv_layers, waveforms)
        return scale_gradient(feature_encoder(self.conv_layers, waveforms), self.config.feature_grad_mult)

    def embed(self, batch: Batch) -> Tokens:
        """x: (B, F, D) projected features; targets ``features`` (B, F, C) LayerNorm-ed conv features (what the
        quantizer sees) and ``conv_features`` (B, F, C) before the LayerNorm (for fairseq's feature penalty)."""
        conv = self.conv_features(batch["input_values"])
        features = self.projection_norm(conv)
        x = self.projection_dropout(self.projection(features))
        mask = batch.get("attention_mask")
        padding_mask = None if mask is None else self.frame_padding_mask(mask, x.shape[1])
        return Tokens(x=x, padding_mask=padding_mask, targets={"features": features, "conv_features": conv})

    def target_size(self, name: str) -> int:
        if name in ("features", "conv_features"):
            return self.feature_size
        return super().target_size(name)

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None) -> Tensor:
        """(B, F, D) -> (B, F, D): padded frames zeroed, + pos-conv (unless ``num_conv_pos_embeddings`` is 0),
        (LayerNorm for post-LN), dropout."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[:, :, None], 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


__all__ = ["CONV_SIZES", "AudioConfig", "AudioAdapter", "ConvLayer", "ConvPositionalEmbedding"]
