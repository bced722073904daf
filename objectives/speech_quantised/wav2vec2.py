"""wav2vec 2.0 pre-training (Baevski et al., 2020, arXiv:2006.11477).

masker x target x loss = span masking of the latent frames x Gumbel-quantized latents x contrastive +
diversity. The conv features of every frame are quantized (G codebooks of V entries, section 3.2); masked
frames are replaced by a learned embedding *before* the convolutional position embedding; the Transformer's
output at each masked frame must pick its own quantized latent among K distractors from masked frames of the
same utterance (eq. 3, cosine similarity / temperature); the diversity loss pushes the average codebook usage
towards uniform (eq. 4). Equals ``transformers``' ``Wav2Vec2ForPreTraining`` on the same weights and masks
(``tests/test_wav2vec2.py``); the quantized codevectors are gathered with one einsum instead of HF's
(frames x G*V x d) broadcast product.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import all_sum, world_size
from selfsup.dropout import Dropout
from selfsup.objectives.losses import feature_penalty
from selfsup.objectives.masking import SpanMasker, frame_lengths, negatives_per_example, sample_negatives
from selfsup.types import EXAMPLE_SEEDS, FIXED_MASK, NEGATIVES, Adapter, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class Wav2Vec2ObjectiveConfig:
    """Quantizer, loss and masking settings (defaults: wav2vec2-base pre-training, fairseq / HF names in
    comments). ``dropout_features`` is fairseq's ``dropout_features`` = HF ``feat_quantizer_dropout``."""

    num_codevector_groups: int = 2            # G (latent_groups)
    num_codevectors_per_group: int = 320      # V (latent_vars)
    codevector_dim: int = 256                 # quantized vector width, G * (codevector_dim / G)
    proj_codevector_dim: int = 256            # final_dim: where predictions and targets are compared
    num_negatives: int = 100                  # K
    contrastive_temperature: float = 0.1      # kappa (contrastive_logits_temperature)
    diversity_loss_weight: float = 0.1        # alpha
    feature_penalty_weight: float = 0.0       # fairseq's features_pen weight (10 for wav2vec2-base there)
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    dropout_features: float = 0.1
    max_gumbel_temperature: float = 2.0
    min_gumbel_temperature: float = 0.5
    gumbel_temperature_decay: float = 0.999995
    collapse_threshold: float = 0.1           # warn when perplexity < this fraction of G * V ...
    collapse_after_steps: int = 100           # ... after this many steps

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if not 0 <= self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")

    def to_dict(self) -> dict:
        return asdict(self)


def codebook_perplexity(probs: Tensor, mask: Tensor | None = None, all_processes: bool = False) -> Tensor:
    """Sum over groups of exp(entropy of the codebook usage averaged over the (masked) frames).

    probs: (N, G, V) per-frame distributions; mask: (N,) bool frames to average over, or None for all.
    ``all_processes``: average over the frames of every process (the global batch), differentiably, so that the
    diversity loss of N processes is the one of a single process on the same global batch (fairseq and
    ``transformers`` average per process).
    """
    if mask is not None:
        probs = torch.where(mask[:, None, None], probs, torch.zeros_like(probs))
        count = mask.sum()
    else:
        count = torch.tensor(len(probs), device=probs.device)
    total = probs.sum(dim=0)
    if all_processes:
        total, count = all_sum(total), all_sum(count, differentiable=False)
    marginal = total / count.clamp_min(1)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(dim=-1)).sum()


def hard_gumbel_softmax(logits: Tensor, noise: Tensor, tau: Tensor | float) -> Tensor:
    """``F.gumbel_softmax(logits, tau, hard=True)`` with the Gumbel noise given: one-hot forward, soft backward."""
    soft = ((logits + noise) / tau).softmax(dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def gumbel_noise(generators: list, lengths: Tensor, frames: int, groups: int, entries: int) -> Tensor:
    """(B * frames, G, V) Gumbel(0, 1) noise, row i's real frames drawn from ``generators[i]``; zeros elsewhere."""
    noise = torch.zeros(len(generators), frames, groups, entries)
    for i, (g, n) in enumerate(zip(generators, lengths.tolist())):
        noise[i, :n] = -torch.empty(int(n), groups, entries).exponential_(generator=g).log()
    return noise.flatten(0, 1)


class GumbelQuantizer(nn.Module):
    """Product quantization with Gumbel-softmax (Jang et al., 2016): G codebooks of V entries of width d/G.

    Training: straight-through hard Gumbel-softmax at ``temperature`` and the perplexity of the *soft*
    distributions; eval: argmax and the perplexity of the one-hot choices. ``temperature`` is a buffer (so
    checkpoints restore it), annealed by :meth:`set_step` to ``max(max_temp * decay**step, min_temp)``.
    """

    def __init__(self, in_dim: int, groups: int, entries: int, codevector_dim: int, max_temperature: float = 2.0,
                 min_temperature: float = 0.5, decay: float = 0.999995) -> None:
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"codevector_dim {codevector_dim} is not a multiple of num_codevector_groups {groups}")
        self.groups, self.entries = groups, entries
        self.max_temperature, self.min_temperature, self.decay = max_temperature, min_temperature, decay
        self.weight_proj = nn.Linear(in_dim, groups * entries)
        self.codevectors = nn.Parameter(torch.empty(groups * entries, codevector_dim // groups))
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)
        self.register_buffer("temperature", torch.tensor(float(max_temperature)))

    @property
    def num_codevectors(self) -> int:
        return self.groups * self.entries

    def set_step(self, step: int) -> None:
        self.temperature.fill_(max(self.max_temperature * self.decay ** step, self.min_temperature))

    def forward(self, x: Tensor, mask: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, F, C) features; mask: (B, F) bool frames for the perplexity; noise: (B * F, G, V) Gumbel noise
        (drawn here when None).

        Returns quantized vectors (B, F, codevector_dim) and the codebook perplexity (scalar). In training the
        perplexity is over the frames of every process (see :func:`codebook_perplexity`).
        """
        b, f, _ = x.shape
        logits = self.weight_proj(x).view(b * f, self.groups, self.entries)
        flat_mask = None if mask is None else mask.reshape(-1)
        if self.training:
            if noise is None:
                probs = F.gumbel_softmax(logits.float(), tau=self.temperature, hard=True).type_as(logits)
            else:
                probs = hard_gumbel_softmax(logits.float(), noise.to(logits.device), self.temperature).type_as(logits)
            perplexity = codebook_perplexity(torch.softmax(logits.float(), dim=-1), flat_mask,
                                             all_processes=world_size() > 1)
        else:
            probs = F.one_hot(logits.argmax(dim=-1), self.entries).type_as(logits)
            perplexity = codebook_perplexity(probs, flat_mask)
        codebook = self.codevectors.view(self.groups, self.entries, -1).type_as(probs)
        return torch.einsum("ngv,gvd->ngd", probs, codebook).reshape(b, f, -1), perplexity


def gather_rows(rows: Tensor, index: Tensor) -> Tensor:
    """``rows[index]`` for an integer ``index`` of any shape, with a deterministic backward.

    The backward of advanced indexing (``index_put_`` with accumulate) adds float rows with atomic adds on a
    multi-threaded CPU, so repeated indices (the negatives share frames) sum in an order that changes from run
    to run under load; ``index_select``'s backward (``index_add_``) adds them in index order.
    """
    return torch.index_select(rows, 0, index.reshape(-1).long()).view(*index.shape, rows.shape[-1])


def contrastive_logits(predicted: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Eq. 3's logits: cosine similarity of each prediction with [its positive, K negatives] / temperature.

    predicted, positives: (M, P); negatives: (M, K, P). Returns (M, 1 + K) float logits, with -inf where a
    negative is identical to the positive (collapsed codebooks; as fairseq and HF do).
    """
    targets = torch.cat([positives[:, None], negatives], dim=1)
    logits = torch.cosine_similarity(predicted[:, None].float(), targets.float(), dim=-1) / temperature
    same = (negatives == positives[:, None]).all(dim=-1)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


class Wav2Vec2Objective(Objective):
    """wav2vec 2.0 over a frame adapter (audio: its ``features`` target is what the quantizer reads) and a
    Transformer.

    batch: what the adapter reads; optional precomputed ``mask_time_indices`` (B, F) bool and ``sampled_negative_indices`` (B, F, K) (flattened over the batch, as
    in ``transformers``) for fixed masks; otherwise the objective draws them. The loss is summed over the
    masked frames (``num_targets``): contrastive + alpha * diversity (+ feature penalty).
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, masker: SpanMasker,
                 config: Wav2Vec2ObjectiveConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Wav2Vec2ObjectiveConfig()
        self.adapter, self.backbone, self.masker = adapter, backbone, masker
        backbone = backbone.config
        self.mask_embedding = nn.Parameter(torch.empty(backbone.hidden_size).uniform_())
        self.dropout_features = Dropout(config.dropout_features)
        self.quantizer = GumbelQuantizer(
            adapter.target_size("features"), config.num_codevector_groups, config.num_codevectors_per_group,
            config.codevector_dim, config.max_gumbel_temperature, config.min_gumbel_temperature,
            config.gumbel_temperature_decay)
        self.project_hid = nn.Linear(backbone.hidden_size, config.proj_codevector_dim)
        self.project_q = nn.Linear(config.codevector_dim, config.proj_codevector_dim)
        self._last_perplexity: Tensor | None = None
        self._warned_collapse = False

    def draw_masks(self, padding_mask: Tensor | None, shape: tuple[int, int], device: torch.device,
                   generator: torch.Generator | None = None, seeds: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, list | None]:
        """Span mask (B, F) over the real frames, negatives (B, F, K) among the masked frames and, with per-example
        ``seeds`` (B,), the example generators (for the Gumbel noise); see ``objectives.masking``."""
        c = self.config
        mask, generators = self.masker(padding_mask, shape, device, generator, seeds)
        if generators is None:
            return mask, sample_negatives(mask, c.num_negatives, generator), None
        return mask, negatives_per_example(generators, mask, frame_lengths(padding_mask, shape),
                                           c.num_negatives), generators

    def forward(self, batch: Batch) -> ObjectiveOutput:
        tokens = self.adapter.embed(batch)
        x, padding_mask = tokens.x, tokens.padding_mask
        mask, negatives = batch.get(FIXED_MASK), batch.get(NEGATIVES)
        generators = None
        if mask is None:
            mask, negatives, generators = self.draw_masks(padding_mask, x.shape[:2], x.device,
                                                          seeds=batch.get(EXAMPLE_SEEDS))
        mask = mask.to(device=x.device, dtype=torch.bool)
        if negatives is None:
            negatives = sample_negatives(mask, self.config.num_negatives)
        x = torch.where(mask[:, :, None], self.mask_embedding.to(x.dtype), x)
        h = self.backbone(self.adapter.add_positions(x, padding_mask), padding_mask).last_hidden_state
        features = self.dropout_features(tokens.targets["features"])
        noise = None
        if generators is not None and self.training:
            q = self.quantizer
            noise = gumbel_noise(generators, frame_lengths(padding_mask, x.shape[:2]), x.shape[1], q.groups, q.entries)
        quantized, perplexity = self.quantizer(features, mask, noise)
        quantized = self.project_q(quantized.to(self.project_q.weight.dtype))            # (B, F, P)
        logits = contrastive_logits(self.project_hid(h[mask]), quantized[mask],
                                    gather_rows(quantized.flatten(0, 1), negatives.to(x.device)[mask]),
                                    self.config.contrastive_temperature)
        return self.loss(logits, perplexity, mask, tokens.targets["conv_features"], padding_mask)

    def loss(self, logits: Tensor, perplexity: Tensor, mask: Tensor, conv_features: Tensor,
             padding_mask: Tensor | None) -> ObjectiveOutput:
        """logits: (M, 1 + K), positive first; sums over the M masked frames."""
        c, n = self.config, mask.sum()
        contrastive = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                                      reduction="sum")
        v = self.quantizer.num_codevectors
        diversity = (v - perplexity) / v
        total = contrastive + c.diversity_loss_weight * diversity * n
        metrics: dict[str, Tensor | float] = {}
        if c.feature_penalty_weight > 0:   # the mean over the real frames of every process (see all_sum)
            penalty = feature_penalty(conv_features, padding_mask, across_processes=self.training)
            total = total + c.feature_penalty_weight * penalty * n
            metrics["feature_penalty"] = penalty.detach()
        with torch.no_grad():
            m = n.clamp_min(1)
            correct = (logits[:, 0] > logits[:, 1:].amax(dim=-1)).sum()  # strictly: ties are not correct
            metrics.update(contrastive_loss=contrastive.detach() / m, diversity_loss=diversity.detach(),
                           contrastive_accuracy=correct.float() / m, codebook_perplexity=perplexity.detach(),
                           gumbel_temperature=self.quantizer.temperature.detach().clone())
        if self.training:
            self._last_perplexity = perplexity.detach()
        return ObjectiveOutput(loss=total, num_targets=n, metrics=metrics)

    def on_step_end(self, step: int) -> None:
        """Anneal the Gumbel temperature; warn once if the codebooks have collapsed."""
        self.quantizer.set_step(step)
        c, ppl = self.config, self._last_perplexity
        if self._warned_collapse or ppl is None or step < c.collapse_after_steps:
            return
        v = self.quantizer.num_codevectors
        if float(ppl) < c.collapse_threshold * v:
            self._warned_collapse = True
            warnings.warn(
                f"wav2vec 2.0: codebook perplexity {float(ppl):.1f} is below {c.collapse_threshold:.0%} of the "
                f"{v} codevectors at step {step}: the quantizer is collapsing onto few codes. Raise "
                f"diversity_loss_weight (now {c.diversity_loss_weight}) or lower the learning rate.",
                RuntimeWarning, stacklevel=2)

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)


__all__ = ["Wav2Vec2Objective", "Wav2Vec2ObjectiveConfig", "GumbelQuantizer", "codebook_perplexity",
           "contrastive_logits"]
