"""Every family's export loads with plain ``transformers`` and says nothing about it: reloaded with the Auto class
its config names (``architectures`` + ``model_type``, or the ``auto_map`` of selfsup's own classes, the only ones
loaded with ``trust_remote_code=True``), no key is missing, unexpected or mismatched, and ``transformers`` logs no
load report ("newly initialized", "not used", ...). The model class a model card's usage snippet names is loaded
the same way (a card that shows a ``pipeline`` loads the config's Auto class of that task).

Exports made by a library function (MAE, ViT, ResNet, CLIP / SigLIP) are made by it from tiny models; those a
recipe writes itself (BERT, GPT-2, data2vec text and audio, wav2vec 2.0, HuBERT, the graph encoder) come from a
one-step tiny run of the recipe.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import speech_argv, tiny_argv

AUTO_CLASSES = ("AutoModel", "AutoModelForPreTraining", "AutoModelForMaskedLM", "AutoModelForCausalLM",
                "AutoModelForZeroShotImageClassification")
NOT_MODELS = ("Tokenizer", "FeatureExtractor", "Processor", "Config")
REPORT_WORDS = ("newly initialized", "not used", "not initialized", "LOAD REPORT", "MISSING", "UNEXPECTED",
                "MISMATCH")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def auto_class_of(folder: Path) -> tuple[str, bool]:
    """(name of the Auto class the config names, whether it is selfsup's own code)."""
    cfg = config_of(folder)
    arch = cfg["architectures"][0]
    if cfg.get("auto_map"):
        named = [k for k, v in cfg["auto_map"].items() if v.endswith(f".{arch}")]
        return ("AutoModel" if "AutoModel" in named else named[0]), True
    import transformers

    for name in AUTO_CLASSES:
        if getattr(transformers, name)._model_mapping._model_mapping.get(cfg["model_type"]) == arch:
            return name, False
    raise AssertionError(f"no Auto class of {AUTO_CLASSES} maps {cfg['model_type']} to {arch}")


def load_quietly(class_name: str, folder: Path, own: bool):
    """Load ``folder`` with ``transformers.<class_name>``; fail on any key that does not fit and on anything
    transformers logs at warning level (or warns) about the weights."""
    import transformers
    from transformers.utils import logging as hf_logging

    records, logger = Records(), logging.getLogger("transformers")
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs = {"trust_remote_code": True} if own else {}
            model, info = getattr(transformers, class_name).from_pretrained(str(folder), output_loading_info=True,
                                                                              **kwargs)
    finally:
        logger.removeHandler(records)
        hf_logging.set_verbosity(before)
    assert {k: v for k, v in info.items() if v} == {}, f"{class_name}({folder.name}): {info}"
    assert records.messages == [], f"{class_name}({folder.name}) logged: {records.messages}"
    said = [str(w.message) for w in caught if any(s in str(w.message) for s in REPORT_WORDS)]
    assert said == [], f"{class_name}({folder.name}) warned: {said}"
    return model


def card_classes(folder: Path) -> list[str]:
    """The model classes the model card's usage snippet loads with ``X.from_pretrained``."""
    card = (folder / "README.md").read_text()
    return [c for c in re.findall(r"\b(\w+)\.from_pretrained\(", card) if not c.endswith(NOT_MODELS)]


# -- exports made by a library function -------------------------------------------------------------------------------
def mae_export(out: Path) -> Path:
    from selfsup.backbones.hf_vit import vit_image_processor
    from selfsup.recipes.builders.masked import mae
    from selfsup.objectives.masked.hf_mae import export_mae

    torch.manual_seed(0)
    export_mae(mae("tiny").eval(), out, vit_image_processor(32, (0.5,) * 3, (0.25,) * 3))
    return out


def two_view_export(out: Path, backbone: str, image_size: int) -> Path:
    from selfsup.backbones.hf_resnet import export_resnet
    from selfsup.backbones.hf_vit import export_vit_encoder
    from selfsup.recipes.builders.two_view import image_encoder

    torch.manual_seed(0)
    encoder = image_encoder(backbone, "tiny", image_size=image_size).eval()
    if backbone == "vit":
        export_vit_encoder(encoder, out)
    else:
        export_resnet(encoder, out, pixel_values=torch.randn(2, 3, min(image_size, 64), min(image_size, 64)))
    return out


def clip_export(out: Path, loss: str, backbone: str) -> Path:
    from selfsup.recipes.builders.image_text import clip
    from selfsup.objectives.image_text.hf_clip import export_clip

    torch.manual_seed(0)
    export_clip(clip("tiny", loss, backbone, vocab_size=120).eval(), out)
    return out


LIBRARY = {
    "mae_vit": mae_export,
    "two_view_vit": lambda out: two_view_export(out, "vit", 32),
    "two_view_resnet_imagenet_stem": lambda out: two_view_export(out, "resnet_tiny", 96),
    "two_view_resnet_cifar_stem": lambda out: two_view_export(out, "resnet_tiny", 32),
    "clip_vit": lambda out: clip_export(out, "clip", "vit"),
    "siglip_vit": lambda out: clip_export(out, "siglip", "vit"),
    "clip_resnet": lambda out: clip_export(out, "clip", "resnet_tiny"),
}


# -- exports a recipe writes ------------------------------------------------------------------------------------------
TEXT = ("--random_init_seeds", "1")
SPEECH = ("--random_init_seeds", "1", "--synthetic_utterances", "24")
RECIPES = {
    "bert_mlm": ("bert_mlm", lambda out: tiny_argv(out, *TEXT, steps=1)),
    "gpt2": ("gpt", lambda out: tiny_argv(out, *TEXT, "--num_samples", "0", "--max_new_tokens", "4", steps=1)),
    "data2vec_text": ("data2vec", lambda out: tiny_argv(out, "--modality", "text", *TEXT, steps=1)),
    "data2vec_audio": ("data2vec", lambda out: speech_argv(out, *SPEECH, steps=1)),
    "wav2vec2": ("wav2vec2", lambda out: speech_argv(out, *SPEECH, steps=1)),
    "hubert": ("hubert", lambda out: speech_argv(out, *SPEECH, "--num_clusters", "8", steps=1)),
    "graph": ("graph", lambda out: ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", "1",
                                    "--report_to", "none", "--random_init_seeds", "1"]),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> export folder, made once per name on first use."""
    import importlib

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            if name in LIBRARY:
                made[name] = LIBRARY[name](root / "export")
            else:
                recipe, argv = RECIPES[name]
                importlib.import_module(f"selfsup.recipes.{recipe}").main(argv(root / "run"))
                made[name] = root / "run" / "export"
        return made[name]

    return get


@pytest.mark.long
@pytest.mark.parametrize("name", [*LIBRARY, *RECIPES])
def test_the_export_loads_with_its_auto_class_and_no_report(exports, name):
    folder = exports(name)
    auto, own = auto_class_of(folder)
    model = load_quietly(auto, folder, own)
    assert type(model).__name__ == config_of(folder)["architectures"][0]


def test_the_mae_export_holds_a_vit_mae_for_pre_training_that_loads_quietly(exports):
    folder = exports("mae_vit") / "pretraining"
    assert auto_class_of(folder) == ("AutoModelForPreTraining", False)
    assert type(load_quietly("AutoModelForPreTraining", folder, False)).__name__ == "ViTMAEForPreTraining"


@pytest.mark.parametrize("name", ["mae_vit", "two_view_vit"])
def test_the_vit_pooled_output_is_the_class_token_not_a_random_layer(exports, name):
    """``AutoModel.from_pretrained(DIR)`` with no arguments: a ``ViTModel`` whose ``pooler_output`` is the class
    token's final state."""
    folder = exports(name)
    model = load_quietly("AutoModel", folder, False).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=x)
    assert out.pooler_output is not None
    assert torch.allclose(out.pooler_output, out.last_hidden_state[:, 0], atol=1e-6)


@pytest.mark.long
@pytest.mark.parametrize("name", RECIPES)
def test_the_class_the_model_card_names_loads_quietly(exports, name):
    folder = exports(name)
    own = bool(config_of(folder).get("auto_map"))
    for class_name in card_classes(folder):
        load_quietly(class_name, folder, own)
