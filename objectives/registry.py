"""Every objective by name: its family, the module that holds it, its class and config, and one line for ``--help``.

Adding an objective adds one line to :data:`METHODS` (beside its file in the family's sub-package and its test).
The modules are imported when a method is asked for, so ``--help`` lists every method without building any.
Recipes choose with ``--method`` among the methods of the families they run (:func:`names`), and build with the
family's builder from the parts they composed for their modality.

A method's numbers live in its own module, in tables keyed by method name (one module may serve several methods:
``two_view/moco_v2.py`` holds MoCo v2 and v1): ``SIZES`` (``{name: {size: config fields}}``), ``PRESETS``
(``{name: {preset: training settings}}``) and ``BACKBONE_DEFAULTS`` (``{name: {backbone kind: config fields}}``).
:meth:`Method.table` reads the method's entry when it is asked for; the family's ``sizes.py`` / ``presets.py``
keep only the shared bases and collect the rest through here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

FAMILIES = {
    "masked": "masked prediction: a masker x a target x a loss (BERT, MAE, GraphMAE, data2vec)",
    "two_view": "two views of each example, one embedding each (SimCLR, MoCo, BYOL, DINO, GraphCL, ...)",
    "image_text": "contrastive pairs of an image and a text (CLIP, SigLIP)",
    "speech_quantised": "contrastive prediction of quantised latents (wav2vec 2.0)",
    "clustering": "prediction of cluster ids of the input (HuBERT, DeepCluster)",
    "autoregressive": "next-token prediction (GPT)",
    "pretext": "prediction of what the data side did or hid (rotations, jigsaw permutations, positions, colours, a hidden region)",
    "predictive": "contrastive prediction of one part of an example from another (CPC, Deep InfoMax)",
}


@dataclass(frozen=True)
class Method:
    """name: what ``--method`` takes; family: a key of :data:`FAMILIES`; module: where the class lives, under
    ``selfsup.objectives`` (``"two_view.simclr"``: it starts with its family), or a full import path for a method
    kept outside the package (``"my_package.my_method"``); objective / config: the class names (no config class:
    the objective's settings are its masker's and its parts'); summary: one line with the paper; presets: the
    recipe presets its module's ``PRESETS`` holds (``"image"``: ``recipes/two_view.py``'s ``--preset cpu / gpu /
    imagenet``), so that recipe lists the method in ``--help`` without importing it."""

    name: str
    family: str
    module: str
    objective: str
    config: str | None
    summary: str
    presets: str = ""

    @property
    def module_path(self) -> str:
        """The import path of the method's module."""
        return f"selfsup.objectives.{self.module}" if self.module.split(".")[0] in FAMILIES else self.module

    def load(self) -> ModuleType:
        """The method's module, imported on first use."""
        return importlib.import_module(self.module_path)

    def classes(self) -> tuple[type, type | None]:
        """(objective class, config class or None), imported from the method's module."""
        module = self.load()
        return getattr(module, self.objective), getattr(module, self.config) if self.config else None

    def table(self, name: str) -> dict[str, Any]:
        """The method's entry in its module's table ``name`` (``SIZES``, ``PRESETS``, ``BACKBONE_DEFAULTS``; each
        keyed by method name), or {} when the module gives it none."""
        return dict(getattr(self.load(), name, {}).get(self.name, {}))

    def make_config(self, settings: dict[str, Any]):
        """The method's config from ``settings``; a clear error naming unknown settings and the choices."""
        config_cls = self.classes()[1]
        if config_cls is None:
            if settings:
                raise ValueError(f"{self.name} takes no objective settings, got {sorted(settings)}")
            return None
        known = {f.name for f in fields(config_cls)}
        if unknown := sorted(set(settings) - known):
            raise ValueError(f"unknown {self.name} settings {unknown}; choose from {sorted(known)}")
        return config_cls(**settings)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("bert_mlm", "masked", "masked.mlm", "MaskedLanguageModeling", None,
           "BERT masked language modelling (Devlin et al., 2019)"),
    Method("mae", "masked", "masked.mae", "MAEObjective", "MAEConfig",
           "masked autoencoder: drop 75 % of the tokens, reconstruct them (He et al., 2021)"),
    Method("graphmae", "masked", "masked.mae", "MAEObjective", "MAEConfig",
           "MAE with graph options: masked node features, re-mask, scaled cosine error (Hou et al., 2022)"),
    Method("patchtst", "masked", "masked.mae", "MAEObjective", "MAEConfig",
           "MAE on series patches: 40 % zeroed, reconstructed by a linear head on the encoder (Nie et al., 2023)"),
    Method("masked_features", "masked", "masked.mae", "MAEObjective", "MAEConfig",
           "MAE on a table's columns: cross-entropy on masked categories, squared error on masked numbers"),
    Method("data2vec", "masked", "masked.data2vec", "Data2VecObjective", "Data2VecObjectiveConfig",
           "predict an EMA teacher's averaged top layers at masked tokens (Baevski et al., 2022)"),
    Method("simclr", "two_view", "two_view.simclr", "SimCLR", "SimCLRConfig",
           "NT-Xent between two views over the global batch (Chen et al., 2020)", presets="image"),
    Method("graphcl", "two_view", "two_view.simclr", "SimCLR", "SimCLRConfig",
           "SimCLR on graph augmentations: node dropping, edge perturbation, masking, subgraphs (You et al., 2020)"),
    Method("scarf", "two_view", "two_view.simclr", "SimCLR", "SimCLRConfig",
           "InfoNCE between a row and a copy with 60 % of its features drawn from their marginals (Bahri et al., 2022)"),
    Method("moco_v2", "two_view", "two_view.moco_v2", "MoCoV2", "MoCoV2Config",
           "momentum encoder and a queue of negatives (He et al., 2020; Chen et al., 2020)", presets="image"),
    Method("moco_v1", "two_view", "two_view.moco_v2", "MoCoV2", "MoCoV2Config",
           "MoCo v1: momentum encoder, queue, a linear head, no blur (He et al., 2020)", presets="image"),
    Method("moco_v3", "two_view", "two_view.moco_v3", "MoCoV3", "MoCoV3Config",
           "momentum encoder, predictor, in-batch negatives (Chen, Xie & He, 2021)", presets="image"),
    Method("byol", "two_view", "two_view.byol", "BYOL", "BYOLConfig",
           "predict a momentum target, no negatives (Grill et al., 2020)", presets="image"),
    Method("simsiam", "two_view", "two_view.simsiam", "SimSiam", "SimSiamConfig",
           "stop-gradient siamese prediction (Chen & He, 2021)", presets="image"),
    Method("swav", "two_view", "two_view.swav", "SwAV", "SwAVConfig",
           "swapped prediction of Sinkhorn cluster codes (Caron et al., 2020)", presets="image"),
    Method("dino", "two_view", "two_view.dino", "DINO", "DINOConfig",
           "self-distillation with a centred, sharpened teacher (Caron et al., 2021)", presets="image"),
    Method("vicreg", "two_view", "two_view.vicreg", "VICReg", "VICRegConfig",
           "variance, invariance, covariance (Bardes, Ponce & LeCun, 2022)", presets="image"),
    Method("barlow_twins", "two_view", "two_view.barlow_twins", "BarlowTwins", "BarlowTwinsConfig",
           "cross-correlation towards the identity (Zbontar et al., 2021)", presets="image"),
    Method("clip", "image_text", "image_text.clip", "CLIPObjective", "CLIPObjectiveConfig",
           "softmax InfoNCE between images and captions (Radford et al., 2021)"),
    Method("siglip", "image_text", "image_text.clip", "CLIPObjective", "CLIPObjectiveConfig",
           "sigmoid loss between images and captions (Zhai et al., 2023)"),
    Method("wav2vec2", "speech_quantised", "speech_quantised.wav2vec2", "Wav2Vec2Objective",
           "Wav2Vec2ObjectiveConfig", "contrastive prediction of Gumbel-quantised latents (Baevski et al., 2020)"),
    Method("hubert", "clustering", "clustering.hubert", "HubertObjective", "HubertObjectiveConfig",
           "predict k-means cluster ids at masked frames (Hsu et al., 2021)"),
    Method("deepcluster", "clustering", "clustering.deepcluster", "DeepCluster", "DeepClusterConfig",
           "k-means of every image's features each epoch, their ids predicted as pseudo-labels (Caron et al., 2018)",
           presets="image"),
    Method("gpt", "autoregressive", "autoregressive.clm", "CausalLanguageModeling", None,
           "next-token prediction with a tied head (Radford et al., 2019)"),
    Method("rotation", "pretext", "pretext.rotation", "RotationPrediction", "RotationConfig",
           "predict which of 4 (or 8, or 2) rotations an image was shown in (Gidaris et al., 2018)", presets="image"),
    Method("jigsaw", "pretext", "pretext.jigsaw", "JigsawPrediction", "JigsawConfig",
           "name the permutation of 3 x 3 shuffled tiles, each encoded alone (Noroozi & Favaro, 2016)",
           presets="image"),
    Method("relative_position", "pretext", "pretext.relative_position", "RelativePosition", "RelativePositionConfig",
           "which of 8 neighbours a patch is, beside the centre patch (Doersch, Gupta & Efros, 2015)", presets="image"),
    Method("instance_discrimination", "two_view", "two_view.instance_discrimination", "InstanceDiscrimination",
           "InstanceDiscriminationConfig",
           "each example its own class: a softmax (or NCE) over a memory bank of features (Wu et al., 2018)",
           presets="image"),
    Method("cpc", "predictive", "predictive.cpc", "CPC", "CPCConfig",
           "contrastive predictive coding: a GRU over the latents predicts the next K by InfoNCE (van den Oord et al., 2018)",
           presets="image"),
    Method("inpainting", "pretext", "pretext.inpainting", "Inpainting", "InpaintingConfig",
           "context encoder: fill in the hidden centre, L2 + an adversarial loss (Pathak et al., 2016)",
           presets="image"),
    Method("colorization", "pretext", "pretext.colorization", "Colorization", "ColorizationConfig",
           "from the lightness, each cell's colour over the 313 ab bins, soft-encoded, class-rebalanced "
           "(Zhang et al., 2016)",
           presets="image"),
    Method("cmc", "two_view", "two_view.cmc", "CMC", "CMCConfig",
           "one encoder per view (L and ab), InfoNCE between the views, in-batch or memory-bank negatives "
           "(Tian, Krishnan & Isola, 2020)", presets="image"),
    Method("deep_infomax", "predictive", "predictive.deep_infomax", "DeepInfoMax", "DeepInfoMaxConfig",
           "local-global Deep InfoMax: an image's global code against its local features, JSD or InfoNCE "
           "(Hjelm et al., 2019)", presets="image"),
)}
ALIASES = {"moco": "moco_v2", "barlow": "barlow_twins"}


def get(name: str) -> Method:
    """The method called ``name`` (or an alias); a clear error naming the choices."""
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def names(*families: str) -> list[str]:
    """The methods of ``families`` (all of them when none is given), in registry order."""
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    return [m.name for m in METHODS.values() if not families or m.family in families]


def describe(*families: str) -> str:
    """``--help`` text: one line per method of ``families``, grouped by family."""
    lines = []
    for family in families or tuple(FAMILIES):
        lines.append(f"{family}: " + "; ".join(f"{m.name} = {m.summary}" for m in METHODS.values()
                                              if m.family == family))
    return "  ".join(lines)


__all__ = ["FAMILIES", "Method", "METHODS", "ALIASES", "get", "names", "describe"]
