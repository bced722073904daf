"""Instance discrimination with a memory bank (Wu, Xiong, Yu & Lin, CVPR 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"): every training example is its own class.

One view per example (``batch["views"][0]``) and its index in the training set (``batch[EXAMPLE_INDEX]``). The
feature ``f`` is the encoder's pooled vector through a linear head to ``out_dim``, L2-normalised. The memory bank
``V`` (num_examples, out_dim), random unit rows at first (seeded), holds one vector per example; the positive of
example i is its current bank row ``v_i``. ``loss="softmax"``: the non-parametric softmax
P(i|f) = exp(v_i·f/T) / sum_j exp(v_j·f/T) over the whole bank, cross-entropy. ``loss="nce"``: NCE with
``num_negatives`` rows drawn uniformly from the bank (noise P_n = 1/N), P(i|f) = exp(v_i·f/T) / Z with Z estimated
once, on the first batch, as mean(exp(v·f/T)) * N, constant after; h = P / (P + K/N), loss
-log h(positive) - sum_k log(1 - h(negative k)). Both are summed over the batch with ``num_targets = B``. After
the loss the rows of the batch move: v_i <- normalise(m v_i + (1 - m) f_i) (no gradient); the features and indices
of every process are gathered first, so every process's bank receives every update and the banks stay identical.
The bank, Z and the sampling counter are persistent buffers: checkpoints save them and resume restores them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from selfsup.distributed import global_count, row_offset
from selfsup.objectives.two_view.common import (encode_online, gather_rows, get_views, mlp, online_encoder,
                                                take_encoder)
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import EXAMPLE_INDEX, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class InstanceDiscriminationConfig:
    """num_examples: the training set's size (the builder fills it); out_dim: the feature width; temperature: T;
    bank_momentum: m of the bank update; loss: "softmax" (over the whole bank) or "nce" (num_negatives sampled
    uniformly); seed: the bank's initialisation and the negatives' draws; head_norm: "none" (the paper's linear
    head) or "all" (a batch norm on its output, which centres the features before they are normalised)."""

    num_examples: int = 0
    out_dim: int = 128
    temperature: float = 0.07
    bank_momentum: float = 0.5
    loss: str = "softmax"
    num_negatives: int = 4096
    seed: int = 0
    head_norm: str = "none"

    def __post_init__(self) -> None:
        if self.loss not in ("softmax", "nce"):
            raise ValueError(f"unknown instance discrimination loss {self.loss!r}; choose 'softmax' or 'nce'")
        if self.head_norm not in ("none", "all"):
            raise ValueError(f"unknown instance discrimination head_norm {self.head_norm!r}; choose 'none' or 'all'")

    def to_dict(self) -> dict:
        return asdict(self)


class InstanceDiscrimination(Objective):
    def __init__(self, encoder: Encoder, config: InstanceDiscriminationConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or InstanceDiscriminationConfig()
        if c.num_examples <= 0:
            raise ValueError("instance discrimination needs num_examples > 0 (the training set's size, for its "
                             f"memory bank); got {c.num_examples}")
        width = take_encoder(self, encoder)
        self.head = mlp([width, c.out_dim], c.head_norm, last_affine=False)
        g = torch.Generator().manual_seed(c.seed)
        self.register_buffer("bank", F.normalize(torch.randn(c.num_examples, c.out_dim, generator=g), dim=1),
                             persistent=True)
        self.register_buffer("z", torch.zeros(()), persistent=True)          # NCE's normaliser, 0 = not yet
        self.register_buffer("draws", torch.zeros((), dtype=torch.long), persistent=True)

    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, out_dim) unit features of the first view and the (B,) example indices."""
        if EXAMPLE_INDEX not in batch:
            raise ValueError(f"instance discrimination needs batch[{EXAMPLE_INDEX!r}], each example's index in the "
                             "training set (the image views collate gives it)")
        views = get_views(batch, need=1)
        index = batch[EXAMPLE_INDEX].long().to(self.bank.device)
        return F.normalize(self.head(encode_online(self, views[:1])).to(self.bank.dtype), dim=1), index

    def sample_negatives(self, n: int) -> torch.Tensor:
        """(n, K) bank indices drawn uniformly for this process's n rows: the rows of the global batch's draw from
        a generator seeded by (seed, draw count), so N processes draw what one process draws, and a resumed run
        what the straight one drew."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.draws))
        offset, total = row_offset(n, self.bank.device), int(global_count(self.bank, n))
        every = torch.randint(0, self.config.num_examples, (total, self.config.num_negatives), generator=g)
        return every[offset:offset + n].to(self.bank.device)

    def loss(self, f: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        c, bank = self.config, self.bank.detach()
        if c.loss == "softmax":
            # a copy: the bank is updated in place before the backward pass
            return F.cross_entropy(f @ bank.clone().T / c.temperature, index, reduction="sum")
        if negatives is None:
            negatives = self.sample_negatives(len(f))
        pos = torch.exp((bank[index] * f).sum(-1) / c.temperature)                       # (B,)
        neg = torch.exp(torch.einsum("bkd,bd->bk", bank[negatives], f) / c.temperature)  # (B, K)
        if float(self.z) == 0:
            with torch.no_grad():   # the first batch's estimate, from every process's rows (identical banks)
                every = gather_rows(neg.detach())
                self.z.fill_(float(every.mean()) * c.num_examples)
        noise = c.num_negatives / c.num_examples          # K * P_n
        p_pos, p_neg = pos / self.z, neg / self.z
        return -(torch.log(p_pos / (p_pos + noise)).sum() + torch.log(noise / (p_neg + noise)).sum())

    @torch.no_grad()
    def update_bank(self, f: torch.Tensor, index: torch.Tensor) -> None:
        """v_i <- normalise(m v_i + (1 - m) f_i) for every process's rows (a repeated index: its last row wins)."""
        f, index = gather_rows(f), gather_rows(index)
        m = self.config.bank_momentum
        self.bank.index_copy_(0, index, F.normalize(m * self.bank[index] + (1 - m) * f.to(self.bank.dtype), dim=1))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        f, index = self.features(batch)
        loss = self.loss(f, index)
        with torch.no_grad():
            accuracy = ((f @ self.bank.T).argmax(-1) == index).float().mean()
        self.update_bank(f.detach(), index)
        if self.config.loss == "nce":
            self.draws += 1
        return ObjectiveOutput(loss, num_targets=len(index), metrics={"instance_accuracy": accuracy})

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"instance_discrimination": dict(tiny=dict(out_dim=16), small=dict(out_dim=128), base=dict(out_dim=128))}
PRESETS = {"instance_discrimination": dict(
    # the paper's linear head and T 0.07 fell below random init at this budget (23.2 % kNN vs 30.4 %: the features
    # of a random-init ResNet share one direction, cosine 0.95, and 3.8 epochs of a stale bank do not part them);
    # a batch norm on the head's output centres them (31.6 %), T 0.2 then 33.7 %; 900 steps: at 300 its probe was
    # level with random init (+0.4 points on 1,000 test images), at 900 +6.8 ± 1.1 on all 10,000 (docs/benchmarks.md)
    cpu={**CPU, "max_steps": 900, "transform": "one_view", "objective": {"head_norm": "all", "temperature": 0.2}},
    # Wu et al. 2018: SGD 0.03, momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, T 0.07, 4096 NCE
    # negatives, bank momentum 0.5 (the rate steps down there; cosine here)
    gpu={**LIGHTLY_CIFAR, "batch_size": 256, "epochs": 200, "learning_rate": 0.03, "transform": "one_view",
         "objective": {"loss": "nce", "num_negatives": 4096, "temperature": 0.07, "bank_momentum": 0.5}},
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.9, "weight_decay": 5e-4,
              "epochs": 200, "warmup_epochs": 0, "transform": "one_view",
              "objective": {"loss": "nce", "num_negatives": 4096, "temperature": 0.07, "bank_momentum": 0.5}},
)}


__all__ = ["InstanceDiscrimination", "InstanceDiscriminationConfig"]
