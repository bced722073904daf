"""Deep InfoMax, local-global (Hjelm et al., ICLR 2019, "Learning deep representations by mutual information
estimation and maximization", sec. 3.2 and Eq. 4-5): maximise the mutual information between an image's global code
and each of its local features.

One view per example (``batch["views"][0]``). One forward of the encoder gives both ends: the **local** features
are the tokens of ``hidden_states[local_layer]`` (a ResNet's stage as an M x M map of C features, row-major; the
default -2 is the stage before the last, 8 x 8 at 32 pixels on the CIFAR stem, the paper's 8 x 8 CIFAR map; -1 the
last map; on a ViT a layer's patch tokens, the class token left out), the **global** vector is the encoder's pooled
features (what the kNN and the probes see). The score is the paper's "encode-and-dot-product" architecture
(its appendix A.2; ``MI1x1ConvNet`` of the authors' code): each local feature through a per-location MLP (a 1x1
convolution), the global vector through an MLP of the same shape, both to ``units`` (the code's ``mi_units``, 2048),
and T(l_i^m, g_j) = g_j . l_i^m. Each MLP is LayerNorm(W2 ReLU(BN(W1 x)) + S x), the shortcut S started near the
identity.

Positives: the local features of the image itself; negatives: the local features of the other images of the
(global) batch, every location. With u[i, j, m] = g_i . l_j^m, per example i:

* ``estimator="jsd"`` (the paper's default, Eq. 4): the negative of E_pos[-softplus(-u)] - E_neg[softplus(u)],
  i.e. mean_m softplus(-u[i, i, m]) + mean_{j != i, m} softplus(u[i, j, m]) (the authors' code adds the constant
  2 log 2 to the estimate of the divergence; it changes no gradient);
* ``estimator="infonce"`` (Eq. 5; the code's ``nce_loss``): for each location m, the cross-entropy of the positive
  u[i, i, m] against it and the negatives u[i, j, m'] (j != i, every m'), averaged over m (the code shifts the own
  image's other locations to -10 instead of leaving them out; here they are left out).

The loss is the sum over the examples, ``num_targets`` = B (the engine divides by the global count: the paper's
means). With N processes the local features are gathered with gradient, so the negatives are the global batch's.
Not implemented: the prior-matching term (the paper's gamma, an adversarial discriminator on the global code)
and global DIM (alpha); this is local DIM (beta = 1), the paper's best representations for classification. The
prior term matches sigmoid(global code) to a uniform prior on [0, 1]^d; the paper's code is the output of a linear
layer, while the global vector here is the pooled features a probe reads, which on a ResNet come after a ReLU
(non-negative, so their sigmoid cannot leave [0.5, 1) and the term could not be met).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import gather_with_grad, row_offset
from selfsup.objectives.two_view.common import get_views, mlp, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput, pool

ESTIMATORS = ("jsd", "infonce")


@dataclass
class DeepInfoMaxConfig:
    """units: the width of the space of the dot product (the paper's 2048); estimator: "jsd" or "infonce";
    local_layer: which entry of the backbone's ``hidden_states`` the local features are (negative: from the end)."""

    units: int = 2048
    estimator: str = "jsd"
    local_layer: int = -2

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown Deep InfoMax estimator {self.estimator!r}; choose from {list(ESTIMATORS)}")

    def to_dict(self) -> dict:
        return asdict(self)


class ScoreHead(nn.Module):
    """(n, d_in) -> (n, units): LayerNorm(W2 ReLU(BN(W1 x)) + S x), per location (a 1x1 convolution on a map;
    the batch norm's statistics are over every location of the batch, as ``BatchNorm2d``'s)."""

    def __init__(self, d_in: int, units: int) -> None:
        super().__init__()
        self.block = mlp([d_in, units, units], "hidden")
        self.shortcut = nn.Linear(d_in, units, bias=False)
        self.norm = nn.LayerNorm(units)
        if units >= d_in:   # a noisy identity to start from, as the authors' code
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[:d_in].fill_diagonal_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.block(x) + self.shortcut(x))


def state_sizes(backbone: nn.Module) -> tuple[int, ...]:
    """The width of every entry of the backbone's ``hidden_states`` (a ResNet's stem and stages; a Transformer's
    input and layers, all of its width)."""
    sizes = getattr(backbone, "hidden_state_sizes", None)
    if sizes is not None:
        return tuple(int(s) for s in sizes)
    return (int(backbone.hidden_size),) * (int(backbone.config.num_layers) + 1)


def jsd_terms(scores: Tensor, offset: int = 0) -> Tensor:
    """(B,) the negative JSD estimate per example: scores (B, B', M) u[i, j, m] of this process's global codes
    against the local features of the global batch, the own image of row i at column offset + i."""
    b, others, m = scores.shape
    rows = torch.arange(b, device=scores.device)
    own = torch.zeros(b, others, 1, dtype=torch.bool, device=scores.device)
    own[rows, offset + rows] = True
    positive = F.softplus(-scores[rows, offset + rows]).mean(-1)
    negative = F.softplus(scores).masked_fill(own, 0.0).sum((1, 2)) / ((others - 1) * m)
    return positive + negative


def infonce_terms(scores: Tensor, offset: int = 0) -> Tensor:
    """(B,) per example the mean over its M locations of -log softmax of the positive u[i, i, m] among it and the
    (B' - 1) * M negatives u[i, j != i, every m']."""
    b, others, m = scores.shape
    rows = torch.arange(b, device=scores.device)
    own = torch.zeros(b, others, 1, dtype=torch.bool, device=scores.device)
    own[rows, offset + rows] = True
    positive = scores[rows, offset + rows]                                          # (B, M)
    negatives = torch.logsumexp(scores.masked_fill(own, float("-inf")).flatten(1), dim=1, keepdim=True)
    return (torch.logaddexp(positive, negatives) - positive).mean(-1)


TERMS = {"jsd": jsd_terms, "infonce": infonce_terms}


class DeepInfoMax(Objective):
    def __init__(self, encoder: Encoder, config: DeepInfoMaxConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DeepInfoMaxConfig()
        width = take_encoder(self, encoder)
        sizes = state_sizes(self.backbone)
        if not -len(sizes) <= c.local_layer < len(sizes):
            raise ValueError(f"local_layer {c.local_layer} is not one of the backbone's {len(sizes)} hidden states")
        self.local_head = ScoreHead(sizes[c.local_layer], c.units)
        self.global_head = ScoreHead(width, c.units)

    def local_and_global(self, view: Batch) -> tuple[Tensor, Tensor]:
        """(B, M, C) the local features (``hidden_states[local_layer]`` without the adapter's prefix tokens) and
        (B, D) the pooled features, from one forward pass."""
        tokens = self.adapter(view)
        if tokens.padding_mask is not None:
            raise ValueError("Deep InfoMax takes whole token maps (images); got a padding mask")
        out = self.backbone(tokens.x, None, True, structure=tokens.structure)
        states = out.hidden_states
        local = states[self.config.local_layer][:, self.adapter.num_prefix_tokens:]
        if self.layers == "all":
            pooled = torch.cat([pool(h, None, self.pooling) for h in states[1:]], dim=-1)
        else:
            pooled = pool(out.last_hidden_state, None, self.pooling)
        return local, self.adapter.example_features(pooled)

    def codes(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(B, M, units) the encoded local features and (B, units) the global codes, in float32 at least."""
        local, pooled = self.local_and_global(get_views(batch, need=1)[0])
        b, m, _ = local.shape
        l_enc = self.local_head(local.reshape(b * m, -1)).reshape(b, m, -1)
        g = self.global_head(pooled)
        dtype = torch.promote_types(g.dtype, torch.float32)
        return l_enc.to(dtype), g.to(dtype)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        l_enc, g = self.codes(batch)
        every = gather_with_grad(l_enc)            # the global batch's local features: the negatives
        if every.shape[0] < 2:
            raise ValueError("Deep InfoMax needs at least 2 images in the (global) batch: the negatives are the "
                             "other images' local features")
        offset = row_offset(len(g), g.device)
        scores = torch.einsum("id,jmd->ijm", g, every)
        loss = TERMS[self.config.estimator](scores, offset).sum()
        with torch.no_grad():   # how often a local feature scores highest with its own image's code (this process's)
            mine = scores[:, offset:offset + len(g)]
            accuracy = (mine.argmax(0) == torch.arange(len(g), device=g.device)[:, None]).float().mean()
        return ObjectiveOutput(loss, num_targets=len(g), metrics={"dim_accuracy": accuracy})

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"deep_infomax": dict(tiny=dict(units=16), small=dict(units=2048), base=dict(units=2048))}
PRESETS = {"deep_infomax": dict(
    # the paper's Adam at 1e-4; 512 units instead of 2048 for the heads (4096 locations a batch at 8 x 8)
    cpu={**CPU, "optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 0.0, "transform": "crop_flip",
         "objective": {"units": 512}},
    # Adam at 1e-4, batch 64, 1000 epochs on CIFAR-10 (the authors' code, rdevon/DIM cortex_DIM/models/dim.py, LocalDIM
    # defaults; the paper's sec. 4 gives Adam 1e-4 and 1000 epochs), the JSD estimator; a ResNet-18 here (the paper: a
    # DCGAN-like convnet and a ResNet); one view, padded crop + flip
    gpu={**LIGHTLY_CIFAR, "batch_size": 64, "epochs": 1000, "optimizer": "adamw", "learning_rate": 1e-4,
         "weight_decay": 0.0, "transform": "crop_flip", "objective": {"estimator": "jsd"}},
    # no ImageNet run in the paper (Tiny ImageNet, STL-10 and CIFAR at most): its Adam 1e-4 on a ResNet-50
    imagenet={**IMAGENET, "optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 0.0, "warmup_epochs": 0,
              "transform": "crop_flip", "objective": {"estimator": "jsd"}},
)}


__all__ = ["DeepInfoMax", "DeepInfoMaxConfig", "ScoreHead", "jsd_terms", "infonce_terms", "state_sizes"]
