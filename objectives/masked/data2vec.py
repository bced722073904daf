"""data2vec pre-training, on any modality (Baevski et al., 2022, arXiv:2202.03555).

masker x target x loss = the modality's masker x the EMA teacher's averaged top-K layers x L2 / smooth L1. With a
:class:`SpanMasker` (audio) the student sees the frames with masked ones replaced by a learned embedding
*before* the position convolutions; with a :class:`TokenMasker` (text) it sees [MASK] ids. The teacher, an exponential moving average of the student (sec. 3.3), sees the *unmasked* input
in eval mode. Its target (sec. 3.3, eq. 3) is the mean over the top K blocks of each block's FFN output before
the last residual connection, each instance-normalised over time; no normalisation of the average for speech.
A linear head regresses the student's final hidden state at each masked frame onto it.

Text (``builders.data2vec_text``) follows fairseq's ``examples/data2vec/config/text/pretraining/base.yaml``:
spans of 4 tokens covering 35 % replaced by [MASK], the top 10 of 12 layers' FFN outputs each layer-normed
(``layer_norm_target_layer``), smooth L1 with beta 4 and ``loss_scale`` 1, a two-layer regression head; the
teacher copies the embeddings (``ema_transformer_layers_only``) and embeds the unmasked ids itself.

Speech defaults follow fairseq's ``examples/data2vec/config/audio/pretraining/base_librispeech.yaml``:
``average_top_k_layers: 8``, ``instance_norm_target_layer: true``, ``loss_beta: 0`` (L2), ``loss_scale: null``
(= 1 / sqrt(D)), ``ema_decay 0.999 -> ema_end_decay 0.9999`` over ``ema_anneal_end_step: 30000``,
``ema_transformer_only`` / ``ema_layers_only`` (the teacher runs on the student's conv features, its position
convolutions are copied, only the encoder LayerNorm and the Transformer layers are averaged), ``mask_prob 0.65``,
``mask_length 10``, ``min_masks 1``.

Where this departs from fairseq: instance norm takes its statistics over the real frames only (fairseq includes
padding, which its cropped batches rarely have); in ``ema_transformer_only`` mode the teacher reads the
student's projected features *after* ``feat_proj_dropout`` (fairseq: before ``dropout_input``; both 0 in
data2vec); ``encoder_layerdrop`` is the backbone's ``layerdrop`` (the teacher, in eval mode, never drops); no
``require_same_masks``; a collapsing target warns once instead of
stopping the run; ``target_layer="block"`` offers the block outputs (after a post-LN block's final LayerNorm).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.objectives.ema import frozen_copy, linear_momentum, update_momentum
from selfsup.objectives.heads import regression_head
from selfsup.objectives.losses import regression_loss
from selfsup.objectives.masking import IGNORE_INDEX, SpanMasker, TokenMasker
from selfsup.types import (EXAMPLE_SEEDS, FIXED_MASK, Adapter, Batch, BackboneOutput, Encoder, Objective,
                           ObjectiveOutput, Tokens)

NORMS = ("instance", "layer", "none")


@dataclass
class Data2VecObjectiveConfig:
    """Target, loss, masking and teacher settings (fairseq names; defaults: data2vec audio base)."""

    average_top_k_layers: int = 8
    target_layer: str = "ffn"                 # "ffn": FFN output before the last residual (fairseq); "block"
    target_layer_norm: str = "instance"       # per layer: instance_norm_target_layer / layer_norm_target_layer
    target_norm: str = "none"                 # of the average: instance_norm_targets / layer_norm_targets
    loss_beta: float = 0.0                    # 0: L2, else smooth L1 with this beta
    loss_scale: float | None = None           # None: 1 / sqrt(D)
    head_layers: int = 1                      # regression head depth (fairseq head_layers; text: 2)
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 30000
    ema_transformer_only: bool = True         # teacher reuses the student's conv features
    ema_layers_only: bool = True              # ... and copies the student's position convolutions
    min_target_var: float = 0.1               # warn once when the target std falls below this ...
    collapse_after_steps: int = 5000          # ... after this many steps (fairseq stops the run there)

    def __post_init__(self) -> None:
        if self.average_top_k_layers < 1:
            raise ValueError(f"average_top_k_layers must be at least 1, got {self.average_top_k_layers}")
        if self.target_layer not in ("ffn", "block"):
            raise ValueError(f"target_layer is {self.target_layer!r}; choose 'ffn' or 'block'")
        for name in ("target_layer_norm", "target_norm"):
            if getattr(self, name) not in NORMS:
                raise ValueError(f"{name} is {getattr(self, name)!r}; choose from {NORMS}")
        if self.head_layers < 1:
            raise ValueError(f"head_layers must be at least 1, got {self.head_layers}")
        if self.ema_layers_only and not self.ema_transformer_only:
            raise ValueError("ema_layers_only implies ema_transformer_only (as in fairseq)")

    def to_dict(self) -> dict:
        return asdict(self)


def masked_instance_norm(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Standardise every (sequence, channel) of x (B, N, D) over its real positions, in float32.

    Equals ``F.instance_norm`` on (B, D, N) when nothing is padded (fairseq's ``instance_norm_target_layer``);
    padded positions neither enter the statistics nor keep a value (they come out 0).
    """
    x = x.float()
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    keep = (~padding_mask)[:, :, None].to(x.dtype)
    count = keep.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * keep).sum(dim=1, keepdim=True) / count
    var = ((x - mean) * keep).pow(2).sum(dim=1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * keep


def normalise(x: Tensor, kind: str, padding_mask: Tensor | None = None) -> Tensor:
    """x (B, N, D) -> float32, ``instance``-normed over time, ``layer``-normed over channels, or as is."""
    if kind == "instance":
        return masked_instance_norm(x, padding_mask)
    if kind == "layer":
        return F.layer_norm(x.float(), x.shape[-1:])
    return x.float()


def layer_outputs(backbone: nn.Module, x: Tensor, padding_mask: Tensor | None, where: str = "ffn",
                  structure=None) -> list[Tensor]:
    """Each layer's (B, N, D) output: ``block`` = the block output (after a post-LN block's final LayerNorm);
    ``ffn`` = its FFN output before dropout and the last residual connection (fairseq's ``layer_result``),
    read with forward hooks on every layer's ``fc2`` (meant for the teacher: in eval mode, so gradient
    checkpointing never recomputes a layer and fires a hook twice). Any backbone gives ``block``; ``ffn`` needs a
    Transformer's layers."""
    if where == "block":
        return list(backbone(x, padding_mask, output_hidden_states=True, structure=structure).hidden_states[1:])
    if not all(hasattr(layer, "fc2") for layer in getattr(backbone, "layers", [None])):
        raise ValueError(f"target_layer 'ffn' reads a Transformer layer's FFN; {type(backbone).__name__} has none: "
                         f"use target_layer 'block'")
    outs: list[Tensor] = []
    handles = [layer.fc2.register_forward_hook(lambda _m, _i, out: outs.append(out)) for layer in backbone.layers]
    try:
        backbone(x, padding_mask)
    finally:
        for h in handles:
            h.remove()
    return outs


def feature_std(y: Tensor) -> Tensor:
    """fairseq's ``compute_var``: mean over channels of the std over rows of y (M, D); 0 for fewer than 2 rows."""
    y = y.detach().float().reshape(-1, y.shape[-1])
    if y.shape[0] < 2:
        return y.new_zeros(())
    return torch.sqrt(y.var(dim=0) + 1e-6).mean()


class Data2VecObjective(Objective):
    """data2vec over any adapter, a backbone (a post-LN Transformer as the papers, a GNN on graphs) and the
    modality's masker.

    batch: what the adapter reads, and for a fixed mask ``mask_time_indices`` (B, N) bool (otherwise the masker
    draws it, per example when the batch carries ``example_seeds``). ``loss`` is summed over the masked positions (``num_targets``). The teacher
    (``self.teacher``, an :class:`Encoder`) is a frozen submodule: checkpoints keep it, the optimizer skips it,
    it never leaves eval mode, and :meth:`on_step_end` moves it towards the student.
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, masker: SpanMasker | TokenMasker,
                 config: Data2VecObjectiveConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Data2VecObjectiveConfig()
        if config.average_top_k_layers > backbone.config.num_layers:
            raise ValueError(f"average_top_k_layers {config.average_top_k_layers} exceeds the "
                             f"{backbone.config.num_layers} layers of the backbone")
        self.adapter, self.backbone, self.masker = adapter, backbone, masker
        if not masker.corrupts_input:  # masked frames become a learned embedding; masked ids are [MASK] already
            self.mask_embedding = nn.Parameter(torch.empty(adapter.hidden_size).uniform_())
        self.regression_head = regression_head(backbone.hidden_size, config.head_layers)
        self.teacher = frozen_copy(self.encoder())
        self.register_buffer("ema_decay", torch.tensor(float(config.ema_decay)))
        self._last_target_var: Tensor | None = None
        self._warned_collapse = False

    # -- teacher ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Data2VecObjective":
        super().train(mode)
        self.teacher.eval()  # the teacher never uses dropout
        return self

    def copied_prefixes(self) -> tuple[str, ...]:
        """Teacher parameters copied from the student instead of averaged (fairseq ``ema_*_only``)."""
        c, out = self.config, ()
        if c.ema_transformer_only:  # the teacher runs on the student's features: keep its own in step
            out += self.adapter.content_prefixes()
        if c.ema_layers_only:
            out += self.adapter.position_prefixes()
        return tuple(f"adapter.{p}" for p in out)

    def momentum(self, step: int) -> float:
        c = self.config
        return linear_momentum(step, c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step)

    def reset_teacher(self) -> None:
        """Make the teacher an exact copy of the student (after loading student weights)."""
        update_momentum(self.teacher, self.encoder(), 0.0)

    def on_step_end(self, step: int) -> None:
        """teacher <- m * teacher + (1 - m) * student with m from the schedule at ``step``; warn once on collapse."""
        m = self.momentum(step)
        self.ema_decay.fill_(m)
        update_momentum(self.teacher, self.encoder(), m, self.copied_prefixes())
        c, var = self.config, self._last_target_var
        if self._warned_collapse or var is None or step < c.collapse_after_steps:
            return
        if float(var) < c.min_target_var:
            self._warned_collapse = True
            warnings.warn(
                f"data2vec: the target std {float(var):.3g} is below min_target_var {c.min_target_var} at step "
                f"{step}: the teacher's representations are collapsing. Lower the learning rate, raise "
                f"ema_decay / ema_end_decay or check the data.", RuntimeWarning, stacklevel=2)

    # -- student, targets, loss -------------------------------------------------------------------------------
    def draw_mask(self, padding_mask: Tensor | None, shape: tuple[int, int], device: torch.device,
                  generator: torch.Generator | None = None, seeds: Tensor | None = None) -> Tensor:
        """Span mask (B, F) over the real frames (a :class:`SpanMasker`)."""
        return self.masker(padding_mask, shape, device, generator, seeds)[0]

    def student(self, tokens: Tokens, mask: Tensor | None, output_hidden_states: bool = False) -> BackboneOutput:
        """The student on ``tokens`` (from ``adapter.embed``) with the frames where mask (B, F) is True replaced
        by the mask embedding before the position convolutions."""
        x = tokens.x
        if mask is not None and not self.masker.corrupts_input:
            x = torch.where(mask[:, :, None], self.mask_embedding.to(x.dtype), x)
        x = self.adapter.add_positions(x, tokens.padding_mask, tokens.structure)
        return self.backbone(x, tokens.padding_mask, output_hidden_states, structure=tokens.structure)

    @torch.no_grad()
    def targets(self, batch: Batch, tokens: Tokens) -> Tensor:
        """(B, F, D) float32 targets from the teacher on the unmasked input: the mean of its top-K layer outputs,
        each normalised (``target_layer_norm``), the mean normalised by ``target_norm``."""
        c, teacher, padding_mask, structure = self.config, self.teacher, tokens.padding_mask, tokens.structure
        if c.ema_transformer_only and not self.masker.corrupts_input:
            x = tokens.x.detach()       # the student's content embeddings of the unmasked input
        else:                           # the teacher embeds the unmasked input itself
            own = teacher.adapter.embed(batch)
            x, padding_mask, structure = own.x, own.padding_mask, own.structure
        x = teacher.adapter.add_positions(x, padding_mask, structure)
        layers = layer_outputs(teacher.backbone, x, padding_mask, c.target_layer,
                               structure)[-c.average_top_k_layers:]
        y = sum(normalise(h, c.target_layer_norm, padding_mask) for h in layers) / len(layers)
        return normalise(y, c.target_norm, padding_mask)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        tokens, mask = self.masked_tokens(batch)
        h = self.student(tokens, mask).last_hidden_state
        y = self.targets(batch, tokens)[mask]
        pred = self.regression_head(h[mask])
        return self.loss(pred, y)

    def masked_tokens(self, batch: Batch) -> tuple[Tokens, Tensor]:
        """The student's content embeddings and the (B, N) bool mask of the positions to predict: ids corrupted
        before ``embed`` (text), or frames marked after it (audio). A fixed ``mask_time_indices`` is used as is."""
        fixed = batch.get(FIXED_MASK)
        if self.masker.corrupts_input:
            ids = self.adapter.input_ids(batch)
            if fixed is not None:
                mask = fixed.to(device=ids.device, dtype=torch.bool)
                inputs = self.masker.apply(ids, mask)
            else:
                inputs, labels = self.masker(ids, seeds=batch.get(EXAMPLE_SEEDS))
                mask = labels != IGNORE_INDEX
            tokens = self.adapter.embed(self.adapter.with_input_ids(batch, inputs))
        else:
            tokens = self.adapter.embed(batch)
            mask = fixed if fixed is not None else self.draw_mask(
                tokens.padding_mask, tokens.x.shape[:2], tokens.x.device, seeds=self.adapter.row_seeds(batch))
            mask = mask.to(device=tokens.x.device, dtype=torch.bool)
        if tokens.padding_mask is not None:
            mask = mask & ~tokens.padding_mask
        return tokens, mask

    def loss(self, pred: Tensor, target: Tensor) -> ObjectiveOutput:
        """pred, target: (M, D) at the M masked frames; the loss is summed over them."""
        c, n = self.config, pred.shape[0]
        scale = c.loss_scale if c.loss_scale is not None else 1.0 / math.sqrt(pred.shape[-1])
        total = regression_loss(pred, target, c.loss_beta, scale).sum()
        with torch.no_grad():
            target_var = feature_std(target)
            metrics = {"regression_loss": total.detach() / max(n, 1), "target_var": target_var,
                       "pred_var": feature_std(pred), "ema_decay": self.ema_decay.detach().clone()}
        if self.training:
            self._last_target_var = target_var
        return ObjectiveOutput(loss=total, num_targets=n, metrics=metrics)

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)


__all__ = ["Data2VecObjective", "Data2VecObjectiveConfig", "masked_instance_norm", "normalise", "layer_outputs",
           "regression_loss", "feature_std"]
