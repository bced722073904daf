"""Masked autoencoders (MAE; He et al., 2021, arXiv:2111.06377), as ``transformers``' ``ViTMAEForPreTraining``.

masker x target x loss = a random 75 % of the patches dropped (argsort of per-patch noise, sec. 3) x each patch's
pixels (per-patch normalised with ``norm_pix_loss``, sec. 3 "Reconstruction target") x MSE over the dropped
patches. The steps, in the order the objective runs them:

1. ``adapter.patches`` (each patch's pixels: the targets) and random masking: ``noise`` (B, N) from the batch
   (``"noise"``, as HF's ``forward(noise=...)``), else from each example's seed (``"example_seeds"``, so N
   processes draw what one draws), else ``torch.rand``; the first K = ``int(N * (1 - mask_ratio))`` patches of
   ``argsort(noise)`` stay visible;
2. ``adapter.embed_patches`` + the patch positions on the K visible patches -> ``adapter.add_class_token`` -> the
   encoder (``backbone``, pre-LN + final norm);
3. ``decoder_embed`` -> mask tokens for the dropped patches -> decoder positions (fixed 2-D sin-cos of the
   decoder width, a zero row for the class token) -> ``decoder`` (pre-LN layers + the decoder norm) ->
   ``decoder_pred`` to P·P·C pixels;
4. loss: per patch the mean squared error over its pixels, summed over the dropped patches
   (``num_targets`` = their number; the engine divides by the global count, so the mean is HF's).

Speed, with HF's results (only the order of some float sums differs; ``tests/test_mae.py`` checks the loss, the
logits and every gradient of a training step against ``ViTMAEForPreTraining``):

* only the visible patches are embedded: the stride-P patch convolution is a matmul on their pixels (HF embeds
  all N and then drops 75 %);
* the decoder runs in *shuffled* order (class token, the visible tokens, then the mask tokens, each with the
  position of the patch it stands for) instead of unshuffling with ``ids_restore``: attention is
  permutation-equivariant. Its input is the visible rows, then rows of a per-patch table (``table_rows``);
* its first layer: a mask token's input is ``mask_token`` + its patch's position, one of N rows for the whole
  batch, so that layer's norm and QKV projection run on those N rows once and are gathered per token
  (``TransformerEncoder(first_qkv=...)``) instead of running on B·(N - K) tokens;
* its last layer computes only the dropped patches' tokens (``outputs_from``): every token is still a key and a
  value, but the queries, the output projection, the MLP, the decoder norm, ``decoder_pred`` and the loss run on
  the N - K dropped patches alone (HF predicts every patch and masks the loss). :meth:`predict` runs them on
  every patch and unshuffles for the full (B, N, P·P·C) logits HF returns.

On a CPU in bf16 the backbone's attention takes SDPA's math kernel on these short sequences
(``selfsup.backbones.transformer.attention_kernels``). ``benchmarks/mae_speed.py`` times a training step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.graphs import node_index, pack, unpack
from selfsup.objectives.masking import example_generators
from selfsup.sharding import is_sharded
from selfsup.types import (EXAMPLE_SEEDS, NOISE, Adapter, Batch, Encoder, Objective, ObjectiveOutput, Tokens,
                           prefix_padding)


@dataclass
class MAEConfig:
    """mask_ratio: share of the tokens masked (MAE 0.75; GraphMAE 0.5-0.75); norm_pix_loss: regress each
    token's target normalised by its own mean and variance (MAE's best image target; HF's default is False; off for
    graphs); norm_pix_eps: added to that variance (HF / MAE: 1e-6); target: the adapter's target to reconstruct
    (``"pixels"`` of image or series patches, ``"features"`` of graph nodes).

    mask_mode: ``"drop"`` (MAE: the encoder sees the visible tokens only, the decoder inserts mask tokens) or
    ``"replace"`` (GraphMAE / SimMIM: masked tokens become a learned mask token and every token is encoded);
    replace_rate: in replace mode, the share of masked tokens given another token's content instead (GraphMAE's
    0.05-0.1); remask: the decoder's input at masked positions in replace mode, ``"zero"`` (GraphMAE's re-mask)
    or ``"token"`` (a learned decoder mask token); loss: ``"mse"`` (MAE) or ``"sce"`` (GraphMAE's scaled cosine
    error with exponent ``sce_alpha``); decoder_embed_bias: GraphMAE's encoder-to-decoder map has none;
    prediction_head: a linear map from the decoder's width to the target (False when the decoder outputs the
    target itself, as GraphMAE's one-layer GNN decoder).

    In replace mode: mask_token: ``"learned"`` (GraphMAE's encoder mask token) or ``"adapter"`` (the adapter's
    embedding of a hidden input, ``adapter.mask_embedding()``: PatchTST's patches of zeros); mask_count:
    ``"masked"`` (``int(mask_ratio * n)`` tokens masked, the lowest noise: GraphMAE) or ``"visible"``
    (``int(n * (1 - mask_ratio))`` stay visible, the lowest noise, the rest masked: MAE's and PatchTST's rule).
    With no decoder (``decoder=None``) the prediction head reads the encoder's output (PatchTST).

    loss ``"mixed"``: a target whose positions are class ids at some tokens and numbers at others
    (``adapter.target_classes``: a table's categorical and numeric columns); the prediction head gives each position
    its own outputs (its classes, or one number), cross-entropy scores the class positions and squared error the
    number positions (a NaN number, a missing value, is not scored), weighted by ``ce_weight`` / ``mse_weight``."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    norm_pix_eps: float = 1e-6
    target: str = "pixels"
    mask_mode: str = "drop"
    replace_rate: float = 0.0
    remask: str = "zero"
    loss: str = "mse"
    sce_alpha: float = 2.0
    decoder_embed_bias: bool = True
    prediction_head: bool = True
    mask_token: str = "learned"
    mask_count: str = "masked"
    ce_weight: float = 1.0
    mse_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name, value, choices in (("mask_mode", self.mask_mode, ("drop", "replace")),
                                     ("remask", self.remask, ("zero", "token")),
                                     ("loss", self.loss, ("mse", "sce", "mixed")),
                                     ("mask_token", self.mask_token, ("learned", "adapter")),
                                     ("mask_count", self.mask_count, ("masked", "visible"))):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose from {list(choices)}")
        if not 0.0 <= self.replace_rate <= 1.0:
            raise ValueError(f"replace_rate must be in [0, 1], got {self.replace_rate}")
        if self.loss == "mixed" and (self.norm_pix_loss or not self.prediction_head):
            raise ValueError("loss 'mixed' scores raw class ids and numbers through its own head: it needs "
                             "norm_pix_loss=False and prediction_head=True")

    def to_dict(self) -> dict:
        return asdict(self)


class Masking(NamedTuple):
    """One draw of MAE's random masking for a batch of N patches, K of them visible.

    ids_shuffle: (B, N) patch indices, visible first (``argsort(noise)``); ids_restore: (B, N) its inverse;
    mask: (B, N) bool, True where a patch is dropped (HF's ``mask`` == 1); num_visible: K.
    """

    ids_shuffle: Tensor
    ids_restore: Tensor
    mask: Tensor
    num_visible: int


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K = ``int(N * (1 - mask_ratio))``, as ``ViTMAEEmbeddings.random_masking``."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(noise: Tensor, mask_ratio: float) -> Masking:
    """MAE's per-example shuffle from noise (B, N): the K patches of lowest noise stay visible."""
    b, n = noise.shape
    k = num_visible(n, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = ids_restore >= k
    return Masking(ids_shuffle, ids_restore, mask, k)


def masking_noise(batch: Batch, shape: tuple[int, int], device: torch.device) -> Tensor:
    """(B, N) float32 noise: ``batch["noise"]``, else one ``torch.rand(N)`` per example from its seed
    (``batch["example_seeds"]``, see ``selfsup.data.example_seed``), else ``torch.rand``."""
    if batch.get(NOISE) is not None:
        noise = torch.as_tensor(batch[NOISE])
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (batch, patches) = {tuple(shape)}")
        return noise.to(device=device, dtype=torch.float32)
    if batch.get(EXAMPLE_SEEDS) is not None:
        gens = example_generators(torch.as_tensor(batch[EXAMPLE_SEEDS]))
        if len(gens) != shape[0]:
            raise ValueError(f"{len(gens)} example_seeds for a batch of {shape[0]}")
        return torch.stack([torch.rand(shape[1], generator=g) for g in gens]).to(device)
    return torch.rand(shape, device=device)


def take(x: Tensor, ids: Tensor) -> Tensor:
    """x (B, N, D) at ids (B, M) along N -> (B, M, D), with ``torch.gather`` (a broadcast index, no copy of it)."""
    return torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))


class _TableRows(torch.autograd.Function):
    """``table[index]`` whose backward is one matmul, ``one_hot(index)ᵀ @ grad``: no scatter-add (slow on a CPU,
    and racy under advanced indexing), the same sums in a fixed order."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows, ctx.dtype = table.shape[0], table.dtype
        return table.index_select(0, index.flatten()).view(*index.shape, table.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        onehot = F.one_hot(index.flatten(), ctx.rows).to(flat.dtype)
        return (onehot.t() @ flat).to(ctx.dtype), None


def table_rows(table: Tensor, index: Tensor) -> Tensor:
    """(*index.shape, D) rows of ``table`` (R, D) picked by ``index`` (long, any shape), differentiable in
    ``table`` (a few rows picked by many tokens, as MAE's mask tokens)."""
    return _TableRows.apply(table, index)


def patch_targets(pixels: Tensor, norm_pix_loss: bool, eps: float = 1e-6) -> Tensor:
    """(…, P·P·C) patch pixels -> float32 targets, each patch normalised by its mean and (unbiased) variance
    when ``norm_pix_loss`` (MAE / HF)."""
    target = pixels.float()
    if norm_pix_loss and target.numel():
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def mae_loss(pred: Tensor, pixels: Tensor, mask: Tensor, norm_pix_loss: bool, eps: float = 1e-6
             ) -> tuple[Tensor, int]:
    """(sum over the dropped patches of each patch's mean squared error, their number).

    pred, pixels: (B, N, P·P·C) predictions and patch pixels; mask: (B, N) True where dropped. Divided by the
    count this is ``ViTMAEForPreTraining``'s loss; predictions at visible patches do not enter it.
    """
    mask = mask.bool()
    per_patch = (pred.float() - patch_targets(pixels, norm_pix_loss, eps)).pow(2).mean(dim=-1)
    return per_patch[mask].sum(), int(mask.sum())


def xavier_init(module: nn.Module) -> nn.Module:
    """MAE's initialisation (``_init_weights`` of the official code): every Linear xavier-uniform with a zero
    bias (the fused QKV projection as one matrix, as timm's ``qkv``), LayerNorms ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class MAEObjective(Objective):
    """A masked autoencoder over any adapter whose tokens carry a reconstruction target: MAE on image patches
    (``mask_mode="drop"``), GraphMAE on graph nodes (``"replace"``), the same class. Given the adapter, the
    encoder (``backbone``) and the decoder (a second backbone; a pre-LN Transformer's final norm is MAE's decoder
    norm, a one-layer GNN is GraphMAE's); it owns ``decoder_embed``, the mask token(s), the decoder's fixed
    positions when the adapter has them (``decoder_positions``: MAE's 2-D sin-cos) and ``decoder_pred``. See the
    module docstring for MAE's steps and :meth:`forward_replace` for GraphMAE's.

    batch: what the adapter reads, optional ``noise`` (B, N) or ``example_seeds`` (B,). ``forward`` returns the
    loss summed over the masked tokens (``num_targets``) and ``metrics["mae_loss"]``, the mean.
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, decoder: nn.Module,
                 config: MAEConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or MAEConfig()
        self.adapter, self.backbone, self.decoder = adapter, backbone, decoder
        if decoder is None and c.mask_mode == "drop":
            raise ValueError("mask_mode 'drop' needs a decoder (it inserts the mask tokens)")
        width = backbone.hidden_size if decoder is None else input_size(decoder)
        self.decoder_embed = (nn.Identity() if decoder is None
                              else nn.Linear(backbone.hidden_size, width, bias=c.decoder_embed_bias))
        if decoder is not None and (c.mask_mode == "drop" or c.remask == "token"):   # the decoder's (MAE)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        if c.mask_mode == "replace" and c.mask_token == "learned":           # the encoder's (GraphMAE: zeros)
            self.encoder_mask_token = nn.Parameter(torch.zeros(adapter.hidden_size))
        table = adapter.decoder_positions(width)
        if table is not None:
            self.register_buffer("decoder_pos_embed", table[None].float())
        else:
            self.decoder_pos_embed = None
        target_size = adapter.target_size(c.target)
        if c.loss == "mixed":   # each position its own outputs: its classes, or one number
            classes = adapter.target_classes(c.target)
            if classes is None:
                raise ValueError(f"loss 'mixed' needs an adapter whose target {c.target!r} has per-position "
                                 f"classes (target_classes)")
            outs = torch.tensor([max(int(k), 1) for k in classes], dtype=torch.long)
            self.register_buffer("target_classes", torch.tensor(classes, dtype=torch.long), persistent=False)
            self.register_buffer("output_offsets", outs.cumsum(0) - outs, persistent=False)
            target_size = int(outs.sum())
        self.decoder_pred = nn.Linear(width, target_size) if c.prediction_head else nn.Identity()
        if c.mask_mode == "drop":   # MAE's initialisation; GraphMAE and PatchTST keep PyTorch's default
            xavier_init(self.decoder_embed), xavier_init(self.decoder_pred)
        if hasattr(self, "mask_token"):
            nn.init.normal_(self.mask_token, std=0.02)

    # -- masking ------------------------------------------------------------------------------------------------
    def draw_masking(self, batch: Batch, num_tokens: int, device: torch.device, rows: int | None = None) -> Masking:
        """MAE's masking of ``batch``'s N = ``num_tokens`` tokens in each of ``rows`` rows (default: one per
        example; see :func:`masking_noise`, one seed per row from ``adapter.row_seeds``)."""
        shape = (self.adapter.batch_size(batch) if rows is None else rows, num_tokens)
        noise = masking_noise({**batch, EXAMPLE_SEEDS: self.adapter.row_seeds(batch)}, shape, device)
        return random_masking(noise, self.config.mask_ratio)

    # -- MAE: the encoder sees the visible tokens only ------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[Tensor, Tensor, Masking]:
        """(latent (B, p + K, D) = the encoder's last hidden state on the prefix and the visible tokens, which is
        ``ViTMAEModel``'s; the targets (B, N, F); the masking). Every token is embedded and given its position,
        then only the K visible ones go on."""
        tokens = self.adapter.embed(batch)
        if tokens.padding_mask is not None:
            raise ValueError("mask_mode 'drop' needs unpadded tokens (every example the same length); "
                             "use mask_mode 'replace' for padded tokens")
        target = tokens.targets[self.config.target]
        masking = self.draw_masking(batch, tokens.x.shape[1], tokens.x.device, rows=tokens.x.shape[0])
        x = self.adapter.add_positions(tokens.x, None, tokens.structure)
        visible = take(x, masking.ids_shuffle[:, :masking.num_visible])
        latent = self.backbone(self.adapter.add_prefix(visible), structure=tokens.structure).last_hidden_state
        return latent, target, masking

    def decode(self, latent: Tensor, masking: Masking, outputs_from: int = 0) -> Tensor:
        """(B, p + N, Dd) the decoder's output (after its norm) in *shuffled* order: prefix, the K visible
        tokens, then the N - K dropped ones, each token with the decoder position of its token. With
        ``outputs_from`` only the tokens from there on (the decoder's last layer computes just them).

        A dropped token's decoder input is ``mask_token`` + its position, one of N rows whatever the example: the
        input is the visible rows followed by those N rows picked per token (:func:`table_rows`), and with a pre-LN
        Transformer decoder the first layer's norm and QKV projection run once on the N rows and are gathered the
        same way (``first_qkv``) instead of running on all B·(N - K) mask tokens."""
        p, k = self.adapter.num_prefix_tokens, masking.num_visible
        y = self.decoder_embed(latent)
        b, n = masking.ids_shuffle.shape
        if self.decoder_pos_embed is not None:
            table = self.decoder_pos_embed[0].to(y.dtype)
        else:
            table = y.new_zeros(p + n, y.shape[-1])
        pos = F.embedding(masking.ids_shuffle[:, :k], table[p:])            # (B, K, Dd), no grad
        if p:
            pos = torch.cat([table[:p].expand(b, -1, -1), pos], dim=1)
        visible = y + pos                                                   # (B, p + K, Dd)
        masked = self.mask_token[0].to(y.dtype) + table[p:]                 # (N, Dd): one row per token
        ids = masking.ids_shuffle[:, k:]                                    # (B, N - K): the dropped tokens

        def gather(per_token: Tensor, per_patch: Tensor) -> Tensor:         # (B, p + N, ·)
            return torch.cat([per_token, table_rows(per_patch, ids)], dim=1)

        first_qkv, layers = None, getattr(self.decoder, "layers", None)
        # not on an FSDP shard: a unit's weights are whole only inside its own forward
        if (getattr(getattr(self.decoder, "config", None), "norm_first", False) and layers and n > k
                and not is_sharded(layers[0])):
            layer = layers[0]
            qkv = lambda t: layer.attn.qkv(layer.norm1(t))                  # noqa: E731
            first_qkv = gather(qkv(visible), qkv(masked))
        return self.decoder(gather(visible, masked), outputs_from=outputs_from,
                            first_qkv=first_qkv).last_hidden_state

    def forward_drop(self, batch: Batch) -> ObjectiveOutput:
        latent, target_all, masking = self.encode(batch)
        start = self.adapter.num_prefix_tokens + masking.num_visible
        h = self.decode(latent, masking, outputs_from=start)                # (B, N - K, Dd): dropped only
        pred = self.decoder_pred(h)                                         # (B, N - K, F)
        ids = masking.ids_shuffle[:, masking.num_visible:]
        target = take(target_all, ids)
        return self.loss(pred.flatten(0, 1), target.flatten(0, 1), ids.flatten())

    # -- GraphMAE / SimMIM: masked tokens replaced, every token encoded -------------------------------------------
    def replace_masking(self, batch: Batch, tokens: Tokens) -> tuple[Tensor, Tensor]:
        """(mask (B, N) bool of the tokens to reconstruct, source (B, N) long: the token whose content each
        position gets). Each example masks ``int(mask_ratio * n)`` of its n real tokens (the lowest noise); a
        masked token takes another random real token's content of the same example with probability
        ``replace_rate`` (GraphMAE's random replacement), else the mask token. (``mask_count="visible"``: the
        ``int(n (1 - mask_ratio))`` lowest-noise tokens stay visible and the others are masked.)

        Each example draws its (n, 3) uniforms -- noise, the replacement coin, the replacement's position -- in
        one call from its own seed (``example_seeds``), of its own length, so they do not depend on the batch it
        is in; the ranking and the choices then run on the whole padded batch at once. With ``noise`` (B, N) in
        the batch the ranking uses it and the other two draws come from ``torch.rand``."""
        x, padding_mask = tokens.x, tokens.padding_mask
        b, n = x.shape[:2]
        real = torch.ones(b, n, dtype=torch.bool) if padding_mask is None else ~padding_mask.cpu()
        lengths = real.sum(dim=1)
        c, seeds, fixed = self.config, self.adapter.row_seeds(batch), batch.get(NOISE)
        if seeds is not None and fixed is None:
            draws = torch.cat([torch.rand(length, 3, generator=g)
                               for length, g in zip(lengths.tolist(), example_generators(torch.as_tensor(seeds)))])
            u = torch.full((b, n, 3), 2.0).index_put_((real,), draws)      # padding ranks last
        else:
            u = torch.rand(b, n, 3)
            if fixed is not None:
                u[..., 0] = torch.as_tensor(fixed)[:, :n].float().cpu()
            u[..., 0].masked_fill_(~real, 2.0)
        rank = u[..., 0].argsort(dim=1).argsort(dim=1)                     # 0 = the lowest noise
        if c.mask_count == "masked":
            mask = rank < (lengths.double() * c.mask_ratio).long()[:, None]    # int(ratio * n), as GraphMAE
        else:                                                               # int(n (1 - ratio)) visible, as MAE
            mask = real & (rank >= (lengths.double() * (1 - c.mask_ratio)).long()[:, None])
        positions = torch.arange(n).expand(b, n)
        source = positions
        if c.replace_rate > 0:
            swap = mask & (u[..., 1] < c.replace_rate)
            drawn = (u[..., 2] * lengths[:, None]).long().clamp(max=n - 1)  # uniform over the example's tokens
            source = torch.where(swap, drawn, positions)
        return mask.to(x.device), source.contiguous().to(x.device)

    def forward_replace(self, batch: Batch) -> ObjectiveOutput:
        """GraphMAE (Hou et al., 2022, sec. 3): every token is encoded, the masked ones replaced by a learned mask
        token (or, at ``replace_rate``, by another token's content); the encoder's output goes through
        ``decoder_embed``, the masked positions are *re-masked* (``remask``: zeroed as GraphMAE, or MAE's decoder
        mask token), the decoder reconstructs the targets and the loss is scored at the masked tokens."""
        tokens, mask, full_mask, out = self.replace_outputs(batch, masked_only=True)
        pred = self.decoder_pred(out if out.dim() == 2 else out[full_mask])
        return self.loss(pred, tokens.targets[self.config.target][mask], mask.nonzero()[:, 1])

    def replace_outputs(self, batch: Batch, masked_only: bool = False) -> tuple[Tokens, Tensor, Tensor, Tensor]:
        """Replace mode up to the prediction head: (tokens, mask (B, N), the mask grown by the prefix (B, p + N),
        the decoder's output (B, p + N, Dd) -- the encoder's when there is no decoder). masked_only, with no
        decoder and an encoder that takes ``outputs_where`` (the shared pre-LN Transformer): the encoder's (T, D)
        outputs at the masked tokens alone, ``out[full_mask]`` (its last MLP runs on those only: PatchTST)."""
        tokens = self.adapter.embed(batch)
        mask, source = self.replace_masking(batch, tokens)
        if self.config.replace_rate > 0:      # some masked tokens take another token's content
            x = torch.gather(tokens.x, 1, source[:, :, None].expand(-1, -1, tokens.x.shape[-1]))
            token = mask & (source == torch.arange(mask.shape[1], device=mask.device))
        else:
            x, token = tokens.x, mask
        hidden = (self.encoder_mask_token if self.config.mask_token == "learned" else self.adapter.mask_embedding())
        x = torch.where(token[:, :, None], hidden.to(x.dtype), x)
        structure, padding = tokens.structure, tokens.padding_mask
        x = self.adapter.add_prefix(self.adapter.add_positions(x, padding, structure))
        p = self.adapter.num_prefix_tokens
        padding = prefix_padding(padding, p)
        full_mask = F.pad(mask, (p, 0)) if p else mask
        if masked_only and self.decoder is None and takes_outputs_where(self.backbone):
            h = self.backbone(x, padding, structure=structure, outputs_where=full_mask).last_hidden_state
            return tokens, mask, full_mask, h
        h = self.backbone(x, padding, structure=structure).last_hidden_state
        if self.decoder is None:
            return tokens, mask, full_mask, h

        def embed_and_remask(rows: Tensor, masked: Tensor) -> Tensor:
            y = self.decoder_embed(rows)
            fill = self.mask_token[0, 0].to(y.dtype) if self.config.remask == "token" else y.new_zeros(())
            return torch.where(masked[..., None], fill, y)

        if padding is None:
            y = embed_and_remask(h, full_mask)
        else:   # on the real tokens only: a batch of graphs can be mostly padding (PROTEINS: 16x the real rows)
            index = node_index(padding)
            y = unpack(embed_and_remask(pack(h, padding, index), pack(full_mask, padding, index)), padding, index)
        if self.decoder_pos_embed is not None:
            y = y + self.decoder_pos_embed[:, : y.shape[1]].to(y.dtype)
        return tokens, mask, full_mask, self.decoder(y, padding, structure=structure).last_hidden_state

    # -- loss ---------------------------------------------------------------------------------------------------
    def loss(self, pred: Tensor, target: Tensor, positions: Tensor | None = None) -> ObjectiveOutput:
        """pred, target: (M, F) at the M masked tokens (positions (M,): each one's token position, for
        ``"mixed"``); MSE (of each token's mean), SCE or the mixed loss, summed over them."""
        c = self.config
        if c.loss == "mixed":
            return self.mixed_loss(pred, target, positions)
        target = patch_targets(target, c.norm_pix_loss, c.norm_pix_eps)
        if c.loss == "sce":
            per_token = scaled_cosine_error(pred, target, c.sce_alpha)
        else:
            per_token = (pred.float() - target).pow(2).mean(dim=-1)
        loss, n = per_token.sum(), per_token.shape[0]
        return ObjectiveOutput(loss=loss, num_targets=n, metrics={"mae_loss": loss.detach() / max(n, 1)})

    def mixed_loss(self, pred: Tensor, target: Tensor, positions: Tensor) -> ObjectiveOutput:
        """``loss="mixed"`` (config): pred (M, sum of outputs) at the M masked tokens, target (M, 1), positions
        (M,). Summed over the scored tokens, each weighted; ``num_targets`` = their number."""
        c = self.config
        total = pred.float().sum() * 0.0     # in the graph even when nothing is scored (every process steps alike)
        ce_sum, ce_n, correct, mse_sum, mse_n = 0.0, 0, 0, 0.0, 0
        for j in torch.unique(positions).tolist():
            rows = positions == j
            k, start = int(self.target_classes[j]), int(self.output_offsets[j])
            t = target[rows, 0].float()
            if k > 0:
                logits = pred[rows, start:start + k].float()
                ce = F.cross_entropy(logits, t.long(), reduction="sum")
                total = total + c.ce_weight * ce
                ce_sum, ce_n = ce_sum + float(ce.detach()), ce_n + len(t)
                correct += int((logits.detach().argmax(-1) == t.long()).sum())
            else:
                keep = ~torch.isnan(t)
                se = (pred[rows, start].float()[keep] - t[keep]).pow(2).sum()
                total = total + c.mse_weight * se
                mse_sum, mse_n = mse_sum + float(se.detach()), mse_n + int(keep.sum())
        count = ce_n + mse_n
        metrics = {"mae_loss": total.detach() / max(count, 1)}
        if ce_n:
            metrics.update(masked_ce=ce_sum / ce_n, masked_accuracy=correct / ce_n)
        if mse_n:
            metrics["masked_mse"] = mse_sum / mse_n
        return ObjectiveOutput(loss=total, num_targets=count, metrics=metrics)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.forward_drop(batch) if self.config.mask_mode == "drop" else self.forward_replace(batch)

    def predict(self, batch: Batch) -> dict[str, Tensor]:
        """What ``ViTMAEForPreTraining`` returns (``mask_mode="drop"``): ``logits`` (B, N, F) at every token in
        input order, ``mask`` (B, N) float (1 = dropped), ``ids_restore`` (B, N), ``latent`` (B, p + K, D), and
        ``loss`` (the mean over the dropped tokens). In replace mode (``PatchTSTForPretraining``'s
        ``prediction_output``): ``logits`` (B, N, F) at every token, ``mask`` (B, N) float, ``loss``."""
        if self.config.mask_mode == "replace":
            tokens, mask, full_mask, out = self.replace_outputs(batch)
            logits = self.decoder_pred(out[:, self.adapter.num_prefix_tokens:])
            scored = self.loss(logits[mask], tokens.targets[self.config.target][mask], mask.nonzero()[:, 1])
            return {"logits": logits, "mask": mask.float(), "loss": scored.loss / max(scored.num_targets, 1)}
        latent, target, masking = self.encode(batch)
        h = self.decode(latent, masking, outputs_from=self.adapter.num_prefix_tokens)
        logits = take(self.decoder_pred(h), masking.ids_restore)
        c = self.config
        total, count = mae_loss(logits, target, masking.mask, c.norm_pix_loss, c.norm_pix_eps)
        return {"logits": logits, "mask": masking.mask.float(), "ids_restore": masking.ids_restore,
                "latent": latent, "loss": total / max(count, 1)}

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """For a picture (``mask_mode="drop"``), in the input's space (``adapter.target_to_input``: MAE's images
        (B, C, H, W)): ``original``; ``masked`` (the dropped tokens zeroed, as the MAE demo shows them);
        ``reconstruction`` (the prediction at every token, un-normalised with each token's own mean and variance
        under ``norm_pix_loss``, as the MAE visualisation does); ``pasted`` (the reconstruction with the visible
        tokens pasted back); ``mask`` (B, N) bool."""
        out = self.predict(batch)
        target = self.adapter.embed(batch).targets[self.config.target].float()
        pred = out["logits"].float()
        if self.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + self.config.norm_pix_eps) ** 0.5 + mean
        mask = out["mask"].bool()
        keep = (~mask)[:, :, None].to(target.dtype)
        back = lambda values: self.adapter.target_to_input(self.config.target, values)  # noqa: E731
        return {"original": back(target), "masked": back(target * keep), "reconstruction": back(pred),
                "pasted": back(target * keep + pred * (1 - keep)), "mask": mask}

    def encoder(self) -> Encoder:
        """The full encoder: every token plus the prefix, (B, p + N, D)."""
        return Encoder(self.adapter, self.backbone)


def compose_masked_autoencoder(adapter, backbone: nn.Module, decoder: nn.Module, **config: Any) -> MAEObjective:
    """The MAE objective on any adapter, encoder and decoder (GraphMAE on a graph adapter and two GNNs)."""
    return MAEObjective(adapter, backbone, decoder, MAEConfig(**config))


def takes_outputs_where(backbone: nn.Module) -> bool:
    """Whether the backbone computes the outputs of chosen tokens alone (``outputs_where``; the shared Transformer
    when pre-LN)."""
    method = getattr(backbone, "takes_outputs_where", None)
    return bool(method()) if callable(method) else False


def input_size(backbone: nn.Module) -> int:
    """The width of the tokens a backbone reads (``input_size`` where it differs from its output width)."""
    return int(getattr(backbone, "input_size", backbone.hidden_size))


def scaled_cosine_error(pred: Tensor, target: Tensor, alpha: float = 2.0) -> Tensor:
    """GraphMAE's scaled cosine error per token (Hou et al., 2022, eq. 4): ``(1 - cos(pred, target)) ** alpha``,
    (M,) float32 for (M, F) rows."""
    cos = (F.normalize(pred.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(dim=-1)
    return (1.0 - cos).pow(alpha)


__all__ = ["MAEConfig", "MAEObjective", "compose_masked_autoencoder", "scaled_cosine_error", "input_size", "Masking", "random_masking", "masking_noise", "num_visible",
           "patch_targets", "table_rows", "mae_loss", "xavier_init", "take"]
