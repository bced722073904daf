"""Contrastive image-text pre-training: CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023).

:class:`CLIPObjective` is *given* two encoders (``builders.clip`` composes them): an image tower (a ViT, or a
ResNet whose tokens are its last feature map) and a text tower (the shared Transformer over a ``TextAdapter``).
It owns the pooling, the projections to the joint space and the learnable temperature.

* **Image features.** CLIP's ViT: the class token's output after the final norm (``post_layernorm``), projected
  without bias. SigLIP's ViT: no class token, attention pooling (:class:`AttentionPool`, SigLIP's "MAP" head;
  ``SiglipMultiheadAttentionPoolingHead``), no projection. ResNet: the mean over its feature map, projected.
* **Text features.** CLIP: a causal Transformer pooled at the first end-of-text token (``CLIPTextModel``:
  ``argmax(input_ids == eos_token_id)``), projected without bias. With right padding the tokens up to the
  end-of-text token never see the padding through the causal mask, so the text tower runs SDPA's causal kernel
  without a padding mask. SigLIP: a bidirectional Transformer over captions padded to the context length (no
  attention mask, as SigLIP), pooled at the last position, projected with a bias (``SiglipTextModel.head``).
* **Temperature.** ``logit_scale`` is the log of the multiplier: CLIP starts at ``log(1 / 0.07)``, SigLIP at
  ``log(10)`` with a logit bias of -10. After every optimizer step it is clamped to ``[0, log(max_logit_scale)]``
  (open_clip clamps at 100); the multiplier is in the metrics of every step, and reaching either end (1 or
  ``max_logit_scale``) logs a warning once per visit.
* **Loss.** :func:`~selfsup.objectives.image_text.losses.clip_loss` or ``siglip_loss`` over the global batch (features
  gathered across processes with gradient; ``local_loss`` for open_clip's local mode). ``loss`` is a mean
  (``num_targets=None``). ``forward`` is ``loss_from_embeddings(embed_for_loss(batch))``, the split that
  ``--contrastive_accumulation`` (``selfsup/gradcache.py``) uses to keep every negative across micro-batches.

Batch: what the two adapters read (each reads its own keys: images and captions); the text adapter gives the ids
the end-of-text pooling looks for (``input_ids``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.transformer import ACTIVATIONS, TransformerEncoder
from selfsup.objectives.image_text.losses import clip_logits, clip_loss, siglip_logits, siglip_loss
from selfsup.monitors import alignment_and_uniformity
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput, masked_mean

logger = logging.getLogger(__name__)
LOSSES = ("clip", "siglip")
IMAGE_POOLING = ("cls", "map", "mean")
TEXT_POOLING = ("eos", "last")


@dataclass
class CLIPObjectiveConfig:
    """loss: ``"clip"`` (softmax InfoNCE) or ``"siglip"`` (sigmoid); embed_dim: width of the joint space;
    image_pooling: ``"cls"`` (class token), ``"map"`` (attention pooling), ``"mean"`` (token mean);
    image_projection: a bias-free linear map to ``embed_dim`` (False: the pooled features are the embedding);
    text_pooling: ``"eos"`` (first ``eos_token_id``) or ``"last"`` (last position); text_projection_bias: SigLIP's
    text head has one; logit_scale_init: the initial multiplier (CLIP 1 / 0.07, SigLIP 10);
    logit_bias_init: SigLIP's initial bias (-10); max_logit_scale: the clamp (100); local_loss: open_clip's local
    mode (see ``clip_losses``)."""

    loss: str = "clip"
    embed_dim: int = 512
    image_pooling: str = "cls"
    image_projection: bool = True
    text_pooling: str = "eos"
    text_projection_bias: bool = False
    eos_token_id: int = 1
    logit_scale_init: float = 1 / 0.07
    logit_bias_init: float = -10.0
    max_logit_scale: float = 100.0
    local_loss: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("loss", self.loss, LOSSES), ("image_pooling", self.image_pooling, IMAGE_POOLING),
                                     ("text_pooling", self.text_pooling, TEXT_POOLING)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose from {list(choices)}")
        if not 1.0 <= self.logit_scale_init <= self.max_logit_scale:
            raise ValueError(f"logit_scale_init {self.logit_scale_init} is outside [1, {self.max_logit_scale}]")

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionPool(nn.Module):
    """SigLIP's multihead attention pooling ("MAP" head): a learned probe attends over the tokens, then a
    pre-LN MLP with a residual; (B, N, D) -> (B, D). Weight names as ``SiglipMultiheadAttentionPoolingHead``."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, activation: str = "gelu_pytorch_tanh",
                 layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, hidden_size))
        nn.init.xavier_uniform_(self.probe)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(hidden_size, intermediate_size),
                                  "fc2": nn.Linear(intermediate_size, hidden_size)})
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        h = self.attention(self.probe.expand(len(x), -1, -1).to(x.dtype), x, x, need_weights=False)[0]
        h = h + self.mlp["fc2"](ACTIVATIONS[self.activation](self.mlp["fc1"](self.layernorm(h))))
        return h[:, 0]


class CLIPObjective(Objective):
    """CLIP / SigLIP over a given image encoder and text encoder (see the module docstring).

    image: Encoder (image adapter + backbone); text: Encoder (``TextAdapter`` + Transformer); image_pool: the
    attention pooling module when ``config.image_pooling == "map"``.
    """

    def __init__(self, image: Encoder, text: Encoder, config: CLIPObjectiveConfig,
                 image_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.image, self.text = image, text
        if (c.image_pooling == "map") != (image_pool is not None):
            raise ValueError("image_pooling 'map' needs an image_pool module, and only it")
        self.image_pool = image_pool
        image_dim, text_dim = image.backbone.hidden_size, text.backbone.hidden_size
        self.image_projection = nn.Linear(image_dim, c.embed_dim, bias=False) if c.image_projection else None
        if not c.image_projection and image_dim != c.embed_dim:
            raise ValueError(f"without an image projection embed_dim must be the image width {image_dim}")
        self.text_projection = nn.Linear(text_dim, c.embed_dim, bias=c.text_projection_bias)
        for proj, width in ((self.image_projection, image_dim), (self.text_projection, text_dim)):
            if proj is not None:   # CLIP's init: normal(0, width ** -0.5)
                nn.init.normal_(proj.weight, std=width ** -0.5)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(c.logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(c.logit_bias_init))) if c.loss == "siglip" else None
        self._at_end: str | None = None

    # -- features ---------------------------------------------------------------------------------------------
    def pooled_image(self, batch: Batch) -> Tensor:
        """(B, D_image) one vector per image of ``batch`` (what the image adapter reads), before the projection."""
        tokens = self.image.adapter(batch)
        if self.config.image_pooling == "cls" and isinstance(self.image.backbone, TransformerEncoder):
            # only the class token's output is used: the last layer computes just that token
            at = torch.zeros(len(tokens.x), 1, dtype=torch.long, device=tokens.x.device)
            return self.image.backbone(tokens.x, tokens.padding_mask, outputs_at=at).last_hidden_state[:, 0]
        h = self.image.backbone(tokens.x, tokens.padding_mask).last_hidden_state
        if self.config.image_pooling == "cls":
            return h[:, 0]
        if self.config.image_pooling == "map":
            return self.image_pool(h)
        return masked_mean(h, tokens.padding_mask)

    def image_features(self, batch: Batch) -> Tensor:
        """(B, embed_dim) image embeddings, not normalised (``get_image_features``)."""
        pooled = self.pooled_image(batch)
        return self.image_projection(pooled) if self.image_projection is not None else pooled

    def text_features(self, batch: Batch) -> Tensor:
        """(B, embed_dim) text embeddings of ``batch`` (what the text adapter reads), not normalised
        (``get_text_features``); pooled at the first end-of-text token (CLIP) or the last position (SigLIP)."""
        input_ids = self.text.adapter.input_ids(batch)
        tokens = self.text.adapter(batch)
        causal = self.text.backbone.config.causal
        if self.config.text_pooling == "eos":
            is_eos = input_ids == self.config.eos_token_id
            if not bool(is_eos.any(dim=1).all()):
                raise ValueError(f"every caption must hold the end-of-text token (id {self.config.eos_token_id})")
            index = is_eos.int().argmax(dim=1)
        else:
            index = torch.full((len(input_ids),), input_ids.shape[1] - 1, device=input_ids.device)
        # only the pooled token's output is used: the last layer computes just that token per caption
        h = self.text.backbone(tokens.x, None if causal else tokens.padding_mask,
                               outputs_at=index[:, None]).last_hidden_state
        return self.text_projection(h[:, 0])

    def scale(self) -> Tensor:
        """The logit multiplier ``exp(logit_scale)``."""
        return self.logit_scale.exp()

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(image, text) L2-normalised embeddings (B, embed_dim) of a batch of pairs."""
        image = F.normalize(self.image_features(batch), dim=-1)
        text = F.normalize(self.text_features(batch), dim=-1)
        return image, text

    def logits(self, batch: Batch) -> Tensor:
        """(B, B) ``logits_per_image`` of this process's pairs (no gathering)."""
        image, text = self.embed(batch)
        if self.config.loss == "clip":
            return clip_logits(image, text, self.scale())
        return siglip_logits(image, text, self.scale(), self.logit_bias)

    # -- the objective ------------------------------------------------------------------------------------------
    def embed_for_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """What the loss needs of a batch (``selfsup/gradcache.py``): the (image, text) embeddings."""
        return self.embed(batch)

    def loss_from_embeddings(self, embeddings: tuple[Tensor, Tensor]) -> ObjectiveOutput:
        """The loss of the batch whose (image, text) embeddings (B, embed_dim) these are (global batch gathered)."""
        image, text = embeddings
        scale = self.scale()
        if self.config.loss == "clip":
            loss = clip_loss(image, text, scale, self.config.local_loss)
        else:
            loss = siglip_loss(image, text, scale, self.logit_bias, self.config.local_loss)
        metrics = {"logit_scale": scale.detach(), **alignment_and_uniformity(image, text)}
        if self.logit_bias is not None:
            metrics["logit_bias"] = self.logit_bias.detach()
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.loss_from_embeddings(self.embed_for_loss(batch))

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """Clamp ``logit_scale`` to ``[0, log(max_logit_scale)]`` (open_clip) and warn on reaching either end."""
        top = math.log(self.config.max_logit_scale)
        self.logit_scale.clamp_(0.0, top)
        value = float(self.logit_scale)
        end = "upper" if value >= top - 1e-6 else "lower" if value <= 1e-6 else None
        if end is not None and end != self._at_end:
            limit = self.config.max_logit_scale if end == "upper" else 1.0
            logger.warning("step %d: the logit scale reached its %s end (%g); the temperature is clamped there",
                           step, end, limit)
        self._at_end = end

    def encoder(self) -> Encoder:
        """The image encoder (what probes score and the recipe reports beside random init)."""
        return self.image

    def encoders(self) -> dict[str, Encoder]:
        return {"image": self.image, "text": self.text}


__all__ = ["CLIPObjective", "CLIPObjectiveConfig", "AttentionPool", "LOSSES"]
