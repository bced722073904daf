"""Audio for data2vec (Baevski et al., 2022, arXiv:2202.03555): the wav2vec 2.0 feature encoder with LayerNorm in
every conv layer, and a *deep* convolutional position embedding.

``embed``: strided 1-D convolutions, each followed by LayerNorm over the channels and GELU (fairseq
``extractor_mode: layer_norm``), LayerNorm, a linear projection to the model width and dropout (fairseq
``dropout_input``, 0 for data2vec). ``add_positions``: padded frames zeroed, ``+`` the position embedding, the
encoder LayerNorm (data2vec audio is post-LN), dropout. The position embedding is
:class:`MultiLayerConvPositionalEmbedding`: ``depth`` grouped convolutions of kernel ``kernel`` with "same"
padding, each followed by a LayerNorm without affine parameters and GELU (fairseq ``pos_conv_depth: 5`` with
``conv_pos: 95``, i.e. kernel ``95 // 5 = 19``), instead of wav2vec 2.0's single weight-normed convolution.
Together they equal ``transformers``' ``Data2VecAudioFeatureEncoder`` + ``Data2VecAudioFeatureProjection`` + the
part of ``Data2VecAudioEncoder`` before its layers (``tests/test_data2vec.py``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.transformer import ACTIVATIONS
from selfsup.dropout import Dropout
from selfsup.modalities.audio import AudioAdapter, ConvLayer, check_grad_mult
from selfsup.types import Adapter, Batch, Tokens


@dataclass
class Data2VecAudioAdapterConfig:
    """Feature encoder and position embedding; names as in ``transformers``' ``Data2VecAudioConfig``.

    num_conv_pos_embeddings: how many position convolutions are stacked (fairseq ``pos_conv_depth``) — *not*
    a kernel size as in ``Wav2Vec2Config``. conv_bias: fairseq and HF default to no bias (data2vec-audio-base).
    """

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    activation: str = "gelu"
    num_conv_pos_embeddings: int = 5
    conv_pos_kernel_size: int = 19
    num_conv_pos_embedding_groups: int = 16
    feat_proj_dropout: float = 0.0
    sampling_rate: int = 16000
    feature_grad_mult: float = 1.0                 # as AudioConfig's

    def __post_init__(self) -> None:
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            tuple(int(v) for v in t) for t in (self.conv_dim, self.conv_kernel, self.conv_stride))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride need one entry per conv layer")
        check_grad_mult(self.feature_grad_mult)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if self.num_conv_pos_embeddings < 1 or self.conv_pos_kernel_size < 1:
            raise ValueError("num_conv_pos_embeddings (depth) and conv_pos_kernel_size must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class MultiLayerConvPositionalEmbedding(nn.Module):
    """data2vec's relative position embedding: ``depth`` x [grouped Conv1d with "same" padding (one frame dropped
    for even kernels) -> LayerNorm over channels without affine parameters -> activation].

    Parameters: ``convs.{i}.weight`` (D, D / groups, K) and ``convs.{i}.bias`` (D,), PyTorch's default init
    (as fairseq). The LayerNorm eps is 1e-5, fixed, as in fairseq and ``transformers``.
    """

    def __init__(self, hidden_size: int, depth: int, kernel: int, groups: int, activation: str = "gelu") -> None:
        super().__init__()
        if hidden_size % groups:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_conv_pos_embedding_groups {groups}")
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden_size, hidden_size, kernel, padding=kernel // 2, groups=groups) for _ in range(depth))
        self.trim = 1 if kernel % 2 == 0 else 0
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        y = x.transpose(1, 2)
        for conv in self.convs:
            y = conv(y)
            if self.trim:
                y = y[:, :, :-self.trim]
            y = F.layer_norm(y.transpose(1, 2), y.shape[1:2], eps=1e-5).transpose(1, 2)
            y = self.act(y)
        return y.transpose(1, 2)


class Data2VecAudioAdapter(Adapter):
    """Raw waveforms -> frame embeddings, data2vec audio style (post-LN: the encoder LayerNorm is applied here).

    batch: ``input_values`` (B, T) float waveforms and optionally ``attention_mask`` (B, T), 1 = real sample
    (right padding). Same ``embed`` / ``add_positions`` contract as :class:`~selfsup.modalities.audio.AudioAdapter`.
    """

    batch_keys = AudioAdapter.batch_keys

    def __init__(self, config: Data2VecAudioAdapterConfig, hidden_size: int, dropout: float = 0.1,
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.config, self.hidden_size = config, hidden_size
        dims = (1, *config.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], k, s, config.conv_bias, "layer", config.activation)
            for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride)))
        self.projection_norm = nn.LayerNorm(dims[-1], eps=layer_norm_eps)
        self.projection = nn.Linear(dims[-1], hidden_size)
        self.projection_dropout = Dropout(config.feat_proj_dropout)
        bound = (1 / dims[-1]) ** 0.5
        nn.init.uniform_(self.projection.weight, -bound, bound)
        nn.init.uniform_(self.projection.bias, -bound, bound)
        self.pos_conv = MultiLayerConvPositionalEmbedding(
            hidden_size, config.num_conv_pos_embeddings, config.conv_pos_kernel_size,
            config.num_conv_pos_embedding_groups, config.activation)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def content_prefixes(self) -> tuple[str, ...]:
        return ("conv_layers.", "projection_norm.", "projection.")

    def position_prefixes(self) -> tuple[str, ...]:
        """The position convolution(s); the encoder LayerNorm counts as the Transformer's (fairseq's
        ``ema_layers_only`` averages it)."""
        return ("pos_conv.",)

    # The conv stack's geometry and forward are the same as AudioAdapter's (they read only ``config.conv_*`` and
    # ``conv_layers``), so they are shared rather than written again.
    feature_size = AudioAdapter.feature_size
    receptive_field = AudioAdapter.receptive_field
    feature_lengths = AudioAdapter.feature_lengths
    frame_padding_mask = AudioAdapter.frame_padding_mask
    conv_features = AudioAdapter.conv_features

    def embed(self, batch: Batch) -> Tokens:
        """x: (B, F, D) projected features; targets ``features`` (B, F, C): the LayerNorm-ed conv features."""
        features = self.projection_norm(self.conv_features(batch["input_values"]))
        x = self.projection_dropout(self.projection(features))
        mask = batch.get("attention_mask")
        padding_mask = None if mask is None else self.frame_padding_mask(mask, x.shape[1])
        return Tokens(x=x, padding_mask=padding_mask, targets={"features": features})

    target_size = AudioAdapter.target_size

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None) -> Tensor:
        """(B, F, D) -> (B, F, D): padded frames zeroed, + position convs, encoder LayerNorm, dropout."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[:, :, None], 0.0)
        return self.dropout(self.norm(x + self.pos_conv(x)))


__all__ = ["Data2VecAudioAdapterConfig",
           "MultiLayerConvPositionalEmbedding", "Data2VecAudioAdapter"]
