"""Conversion between :class:`CLIPObjective` and ``transformers``: ``CLIPModel`` (ViT image tower, CLIP loss),
``SiglipModel`` (ViT image tower, sigmoid loss), and, for a ResNet image tower (no native class), selfsup's own
``SelfsupCLIPModel`` saved with its code.

Names (ours -> HF, ``{t}`` = ``vision_model`` or ``text_model``): ``backbone.layers.{i}.attn.qkv`` is split into
``{t}.encoder.layers.{i}.self_attn.{q,k,v}_proj``; ``attn.out`` -> ``self_attn.out_proj``, ``norm1`` / ``norm2`` ->
``layer_norm1`` / ``layer_norm2``, ``fc1`` / ``fc2`` -> ``mlp.fc1`` / ``mlp.fc2``; the image tower's final norm is
``vision_model.post_layernorm`` (CLIP applies it to the class token only: the same pooled output), the text
tower's ``text_model.final_layer_norm``; the text embeddings are ``token_embedding`` / ``position_embedding``.
CLIP's image embeddings: our ``NormedAdapter``'s LayerNorm is ``pre_layrnorm``, the class token (plus its
position) ``class_embedding`` (plus row 0 of ``position_embedding``); CLIP's patch convolution has no bias, so ours
is folded into the patch rows of the position table (exact: both are added before the LayerNorm); the
projections are ``visual_projection`` / ``text_projection``. SigLIP: our attention pool is ``vision_model.head``,
our text projection (with bias) ``text_model.head``, and ``logit_scale`` / ``logit_bias`` have shape (1,).

**Export layout** (:func:`export_clip`): ``DIR/config.json`` + ``model.safetensors`` + the processor
(``CLIPProcessor`` / ``SiglipProcessor``: image processor + our caption tokenizer) + (ResNet)
``modeling_selfsup_clip.py``. ``AutoModel.from_pretrained(DIR)`` and ``AutoProcessor.from_pretrained(DIR)`` load it
(``trust_remote_code=True`` for the ResNet class only), and ``pipeline("zero-shot-image-classification",
model=DIR)`` runs on it. Our objective's settings ride along under ``selfsup_clip`` in the config.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones import hf_resnet
from selfsup.backbones.hf_resnet import MODELING_FILE as RESNET_FILE
from selfsup.backbones.hf_resnet import config_fields as resnet_fields
from selfsup.backbones.hf_resnet import config_from as resnet_config_from
from selfsup.backbones.remote import modeling_selfsup_clip as remote_clip
from selfsup.backbones.remote import modeling_selfsup_resnet as remote_resnet
from selfsup.backbones.resnet import ResNetBackbone
from selfsup.backbones.transformer import WIRINGS, TransformerConfig, TransformerEncoder
from selfsup.convert import check_close, export_state, fill_model, import_state, load_into, max_abs_diff
from selfsup.errors import SelfsupError
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.modalities.image_text import NormedAdapter
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.image_text.clip import AttentionPool, CLIPObjective, CLIPObjectiveConfig
from selfsup.objectives.image_text.sizes import CLIP_LOSS_SETTINGS
from selfsup.types import Encoder


def clip_text_tower(text: TransformerConfig, vocab_size: int, context_length: int, pad_token_id: int):
    """The text Encoder: token + learned position embeddings (no norm, no token types, no dropout: CLIP's), and
    the Transformer. CLIP pads with its end-of-text token, whose embedding must learn: no frozen padding row."""
    adapter = TextAdapter(vocab_size, text.hidden_size, context_length, type_vocab_size=0, pad_token_id=pad_token_id,
                          dropout=0.0, layer_norm_eps=text.layer_norm_eps, embedding_norm=False)
    adapter.word_embeddings.padding_idx = None
    torch.nn.init.normal_(adapter.word_embeddings.weight, std=0.02)
    return Encoder(adapter, TransformerEncoder(text))


def compose_clip(image, text: TransformerConfig, vocab_size: int, context_length: int, config,
                 image_pool=None, pad_token_id: int = 1):
    """A :class:`CLIPObjective` from an image Encoder (and its attention pool), the text tower's config and the
    objective's config."""
    return CLIPObjective(image, clip_text_tower(text, vocab_size, context_length, pad_token_id), config, image_pool)

QKV = ("q_proj", "k_proj", "v_proj")
LAYER_MAP = {"attn.out": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2", "fc1": "mlp.fc1",
             "fc2": "mlp.fc2"}
OWN_TYPES = {"clip": "selfsup_clip", "siglip": "selfsup_siglip"}
MODELING_FILE = "modeling_selfsup_clip.py"



def auto_map(loss: str) -> dict[str, str]:
    kind = "Siglip" if loss == "siglip" else "CLIP"
    return {"AutoConfig": f"modeling_selfsup_clip.Selfsup{kind}Config",
            "AutoModel": f"modeling_selfsup_clip.Selfsup{kind}Model",
            "AutoModelForZeroShotImageClassification": f"modeling_selfsup_clip.Selfsup{kind}Model"}


def remote_code_classes():
    """The module the export ships (``backbones/remote/modeling_selfsup_clip.py``)."""
    return remote_clip


# -- configs ----------------------------------------------------------------------------------------------------
def is_vit(objective: CLIPObjective) -> bool:
    return not isinstance(objective.image.backbone, ResNetBackbone)


def image_adapter(objective: CLIPObjective) -> ImageAdapter:
    adapter = objective.image.adapter
    return adapter.inner if isinstance(adapter, NormedAdapter) else adapter


def check_towers(objective: CLIPObjective) -> None:
    """A one-line error unless our towers are what the target class computes."""
    c, loss = objective.config, objective.config.loss
    towers = [objective.text.backbone.config] + ([objective.image.backbone.config] if is_vit(objective) else [])
    if any(not t.norm_first or not t.final_norm or not t.bias for t in towers):
        raise SelfsupError("only pre-LN towers with a final norm and biases export to transformers")
    if objective.text.backbone.config.causal != (loss == "clip") or c.text_pooling != ("eos" if loss == "clip" else "last"):
        raise SelfsupError(f"the {loss} export needs {'a causal text tower pooled at eos' if loss == 'clip' else 'a bidirectional text tower pooled at the last token'}")
    if is_vit(objective):
        want = ("cls", True) if loss == "clip" else ("map", False)
        if (c.image_pooling, image_adapter(objective).cls_token is not None) != want:
            raise SelfsupError(f"the {loss} export needs {'a class token' if loss == 'clip' else 'attention pooling'}")
        if (loss == "clip") != isinstance(objective.image.adapter, NormedAdapter):
            raise SelfsupError("CLIPModel's image tower normalises its embeddings (NormedAdapter); SigLIP's does not")


def tower_fields(cfg: TransformerConfig) -> dict[str, Any]:
    return dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, hidden_act=cfg.activation, layer_norm_eps=cfg.layer_norm_eps,
                attention_dropout=cfg.attention_dropout)


def text_fields(objective: CLIPObjective, tokenizer=None) -> dict[str, Any]:
    a = objective.text.adapter
    eos = objective.config.eos_token_id
    fields = dict(**tower_fields(objective.text.backbone.config), vocab_size=a.vocab_size,
                  max_position_embeddings=a.max_positions, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id if tokenizer is not None else eos,
                  bos_token_id=tokenizer.bos_token_id if tokenizer is not None else 0)
    if objective.config.loss == "siglip":
        fields["projection_size"] = objective.config.embed_dim
    else:
        fields["projection_dim"] = objective.config.embed_dim
    return fields


def hf_config(objective: CLIPObjective, tokenizer=None):
    """``CLIPConfig`` / ``SiglipConfig`` (ViT) or ``SelfsupCLIPConfig`` (ResNet, with ``auto_map``)."""
    check_towers(objective)
    c = objective.config
    extra = dict(selfsup_clip=c.to_dict())
    if not is_vit(objective):
        cfg_cls = remote_code_classes().SelfsupSiglipConfig if c.loss == "siglip" else remote_code_classes().SelfsupCLIPConfig
        vision = {k: v for k, v in resnet_fields(objective.image.backbone.config).items()}
        vision.update(embedding_kernel_size=3 if objective.image.backbone.config.cifar_stem else 7,
                      embedding_stride=1 if objective.image.backbone.config.cifar_stem else 2,
                      embedding_pooling=not objective.image.backbone.config.cifar_stem)
        config = cfg_cls(vision_config=vision, text_config=text_fields(objective, tokenizer), projection_dim=c.embed_dim,
                         logit_scale_init_value=float(objective.logit_scale.detach()), **extra)
        config.auto_map = auto_map(c.loss)
        return config
    a = image_adapter(objective).config
    vision = dict(**tower_fields(objective.image.backbone.config), image_size=a.image_size, patch_size=a.patch_size,
                  num_channels=a.num_channels, selfsup_image=a.to_dict())
    if c.loss == "clip":
        from transformers import CLIPConfig

        vision["projection_dim"] = c.embed_dim
        return CLIPConfig(text_config=text_fields(objective, tokenizer), vision_config=vision,
                          projection_dim=c.embed_dim, logit_scale_init_value=float(objective.logit_scale.detach()), **extra)
    from transformers import SiglipConfig

    return SiglipConfig(text_config=text_fields(objective, tokenizer), vision_config=dict(vision, vision_use_head=True),
                        **extra)


# -- weights ----------------------------------------------------------------------------------------------------
def tower_pairs(prefix: str, final_norm: str) -> list[tuple[str, str]]:
    return [*((f"backbone.layers.{{i}}.{ours}.", f"{prefix}encoder.layers.{{i}}.{theirs}.")
              for ours, theirs in LAYER_MAP.items()), ("backbone.norm.", f"{prefix}{final_norm}.")]


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def to_hf_state_dict(objective: CLIPObjective) -> dict[str, torch.Tensor]:
    """Our weights under the target class's names (layout in the module docstring)."""
    state, loss = objective.state_dict(), objective.config.loss
    text = {f"backbone.{k}": v for k, v in _under(state, "text.backbone.").items()}
    out = export_state(text, tower_pairs("text_model.", "final_layer_norm"), "text_model.encoder.layers.{i}.self_attn.",
                       QKV, "CLIP text")
    out["text_model.embeddings.token_embedding.weight"] = state["text.adapter.word_embeddings.weight"]
    out["text_model.embeddings.position_embedding.weight"] = state["text.adapter.position_embeddings.weight"]
    if loss == "siglip":
        out["text_model.head.weight"] = state["text_projection.weight"]
        out["text_model.head.bias"] = state["text_projection.bias"]
        out["logit_scale"], out["logit_bias"] = state["logit_scale"].reshape(1), state["logit_bias"].reshape(1)
    else:
        out["text_projection.weight"], out["logit_scale"] = state["text_projection.weight"], state["logit_scale"]
    if "image_projection.weight" in state:
        out["visual_projection.weight"] = state["image_projection.weight"]
    if not is_vit(objective):
        out.update({f"vision_model.{k}": v for k, v in hf_resnet.to_hf_state_dict(objective.image.backbone).items()})
        if loss == "siglip":
            out["logit_scale"], out["logit_bias"] = state["logit_scale"], state["logit_bias"]
        return out
    image = {f"backbone.{k}": v for k, v in _under(state, "image.backbone.").items()}
    out.update(export_state(image, tower_pairs("vision_model.", "post_layernorm"),
                            "vision_model.encoder.layers.{i}.self_attn.", QKV, "CLIP image"))
    inner = "image.adapter.inner." if loss == "clip" else "image.adapter."
    positions = state[f"{inner}position_embeddings"][0].clone()
    e = "vision_model.embeddings."
    if loss == "clip":
        positions[1:] += state[f"{inner}patch_embed.bias"]     # CLIP's patch convolution has no bias
        out[f"{e}class_embedding"] = state[f"{inner}cls_token"].reshape(-1)
        out["vision_model.pre_layrnorm.weight"] = state["image.adapter.norm.weight"]
        out["vision_model.pre_layrnorm.bias"] = state["image.adapter.norm.bias"]
    else:
        out[f"{e}patch_embedding.bias"] = state[f"{inner}patch_embed.bias"]
        out.update({f"vision_model.head.{k}": v for k, v in _under(state, "image_pool.").items()})
    out[f"{e}patch_embedding.weight"] = state[f"{inner}patch_embed.weight"]
    out[f"{e}position_embedding.weight"] = positions
    return out


def from_hf_state_dict(objective: CLIPObjective, hf: dict[str, torch.Tensor]) -> None:
    """Load the target class's weights into our objective (every weight must fit)."""
    loss = objective.config.loss
    ours = {f"text.{k}": v for k, v in import_state(hf, tower_pairs("text_model.", "final_layer_norm"),
                                                    "text_model.encoder.layers.{i}.self_attn.", QKV).items()
            if k.startswith("backbone.")}
    ours["text.adapter.word_embeddings.weight"] = hf["text_model.embeddings.token_embedding.weight"]
    ours["text.adapter.position_embeddings.weight"] = hf["text_model.embeddings.position_embedding.weight"]
    ours["logit_scale"] = hf["logit_scale"].reshape(())
    if loss == "siglip":
        ours["logit_bias"] = hf["logit_bias"].reshape(())
        if "text_model.head.weight" in hf:
            ours["text_projection.weight"], ours["text_projection.bias"] = hf["text_model.head.weight"], hf["text_model.head.bias"]
    if "text_projection.weight" in hf:
        ours["text_projection.weight"] = hf["text_projection.weight"]
    if "visual_projection.weight" in hf:
        ours["image_projection.weight"] = hf["visual_projection.weight"]
    if not is_vit(objective):
        ours.update({f"image.backbone.{k}": v
                     for k, v in hf_resnet.from_hf_state_dict(_under(hf, "vision_model.")).items()})
        load_into(objective, ours, optional=lambda k: False)
        return
    ours.update({f"image.{k}": v for k, v in import_state(hf, tower_pairs("vision_model.", "post_layernorm"),
                                                          "vision_model.encoder.layers.{i}.self_attn.", QKV).items()
                 if k.startswith("backbone.")})
    e = "vision_model.embeddings."
    inner = "image.adapter.inner." if loss == "clip" else "image.adapter."
    positions = hf[f"{e}position_embedding.weight"][None].clone()
    ours[f"{inner}patch_embed.weight"] = hf[f"{e}patch_embedding.weight"]
    if loss == "clip":
        ours[f"{inner}patch_embed.bias"] = torch.zeros(positions.shape[-1])
        ours[f"{inner}cls_token"] = hf[f"{e}class_embedding"].reshape(1, 1, -1)
        ours["image.adapter.norm.weight"] = hf["vision_model.pre_layrnorm.weight"]
        ours["image.adapter.norm.bias"] = hf["vision_model.pre_layrnorm.bias"]
    else:
        ours[f"{inner}patch_embed.bias"] = hf[f"{e}patch_embedding.bias"]
        ours.update({f"image_pool.{k}": v for k, v in _under(hf, "vision_model.head.").items()})
    ours[f"{inner}position_embeddings"] = positions
    load_into(objective, ours, optional=lambda k: False)


# -- to and from transformers ------------------------------------------------------------------------------------
def clip_to_transformers(objective: CLIPObjective, tokenizer=None):
    """A ``CLIPModel`` / ``SiglipModel`` / ``SelfsupCLIPModel`` holding our weights (float32, eval mode)."""
    config = hf_config(objective, tokenizer)
    if config.model_type in OWN_TYPES.values():
        classes = remote_code_classes()
        model = (classes.SelfsupSiglipModel if config.model_type == OWN_TYPES["siglip"] else classes.SelfsupCLIPModel)(config)
    elif config.model_type == "clip":
        from transformers import CLIPModel

        model = CLIPModel(config)
    else:
        from transformers import SiglipModel

        model = SiglipModel(config)
    return fill_model(model, to_hf_state_dict(objective), config.model_type)


LEGACY_CLIP_EOS = 2


def objective_from_config(hf_cfg: Any) -> CLIPObjective:
    """A fresh :class:`CLIPObjective` shaped as a CLIP / SigLIP / selfsup config (a config object or dict)."""
    get = (lambda k, d=None: hf_cfg.get(k, d)) if isinstance(hf_cfg, dict) else (lambda k, d=None: getattr(hf_cfg, k, d))
    model_type = get("model_type")
    loss = "siglip" if "siglip" in model_type else "clip"
    wiring = CLIP_LOSS_SETTINGS[loss]
    as_dict = lambda c: c if isinstance(c, dict) else c.to_dict()   # noqa: E731
    text, vision = as_dict(get("text_config")), as_dict(get("vision_config"))
    stored = get("selfsup_clip") if isinstance(get("selfsup_clip"), dict) else {}

    def tower(c: dict, causal: bool) -> TransformerConfig:
        return TransformerConfig(**{**WIRINGS[wiring["tower"]], "hidden_size": c["hidden_size"], "num_layers": c["num_hidden_layers"],
                                    "num_heads": c["num_attention_heads"], "intermediate_size": c["intermediate_size"],
                                    "activation": c["hidden_act"], "layer_norm_eps": c["layer_norm_eps"],
                                    "causal": causal})
    eos = text.get("eos_token_id", 1)
    if loss == "clip" and eos == LEGACY_CLIP_EOS:
        # transformers' CLIPTextTransformer, for configs saved before eos_token_id was right (openai/clip-*: 2),
        # pools at argmax(input_ids): the end-of-text token there is the last id of the vocabulary
        eos = text["vocab_size"] - 1
    settings = {**wiring["objective"], **stored, "loss": loss, "eos_token_id": eos}
    if model_type in OWN_TYPES.values():
        backbone = ResNetBackbone(resnet_config_from(vision))
        image, pool = Encoder(objective_pixel_adapter(backbone), backbone), None
        settings.update(image_pooling="mean", image_projection=True, embed_dim=get("projection_dim"))
    else:
        if vision["image_size"] != int(vision["image_size"]) or not isinstance(vision["patch_size"], int):
            raise SelfsupError("only square images and patches import")
        vit = tower(vision, False)
        stored_image = vision.get("selfsup_image") if isinstance(vision.get("selfsup_image"), dict) else {}
        image_cfg = ImageConfig(**{**stored_image, **wiring["image"], "image_size": int(vision["image_size"]),
                                   "patch_size": vision["patch_size"], "num_channels": vision.get("num_channels", 3)})
        adapter = ImageAdapter(image_cfg, vit.hidden_size)
        if loss == "clip":
            image, pool = Encoder(NormedAdapter(adapter, vit.layer_norm_eps), TransformerEncoder(vit)), None
            settings["embed_dim"] = get("projection_dim")
        else:
            image = Encoder(adapter, TransformerEncoder(vit))
            pool = AttentionPool(vit.hidden_size, vit.num_heads, vit.intermediate_size, vit.activation, vit.layer_norm_eps)
            settings["embed_dim"] = vit.hidden_size
    config = CLIPObjectiveConfig(**settings)
    pad = text.get("pad_token_id")
    return compose_clip(image, tower(text, loss == "clip"), text["vocab_size"], text["max_position_embeddings"],
                        config, pool, pad if isinstance(pad, int) else config.eos_token_id)


def objective_pixel_adapter(backbone: ResNetBackbone):
    from selfsup.modalities.image import PixelAdapter

    return PixelAdapter(backbone.config.num_channels, backbone.config.hidden_size)


def clip_from_transformers(path: str | Path) -> CLIPObjective:
    """Our objective from a ``CLIPModel`` / ``SiglipModel`` checkpoint (folder or Hub name; no remote code) or a
    selfsup ResNet export (its config.json and safetensors are read; its code is not run): ``--init_from``."""
    folder, where = Path(path), str(path)
    config_file = folder / "config.json"
    own = config_file.is_file() and json.loads(config_file.read_text(encoding="utf-8")).get("model_type") in OWN_TYPES.values()
    try:
        if own:
            from safetensors.torch import load_file

            hf_cfg, state = json.loads(config_file.read_text(encoding="utf-8")), load_file(str(folder / "model.safetensors"))
        else:
            import transformers

            hf_cfg = transformers.AutoConfig.from_pretrained(where, trust_remote_code=False)
            if hf_cfg.model_type not in ("clip", "siglip"):
                raise SelfsupError(f"model type {hf_cfg.model_type!r}; --init_from needs a CLIP or SigLIP checkpoint")
            cls = transformers.CLIPModel if hf_cfg.model_type == "clip" else transformers.SiglipModel
            state = cls.from_pretrained(where, trust_remote_code=False).state_dict()
        objective = objective_from_config(hf_cfg)
        from_hf_state_dict(objective, state)
    except SelfsupError as err:
        raise SelfsupError(f"{where}: {err}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SelfsupError(f"{where}: cannot import ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return objective


# -- export and check -------------------------------------------------------------------------------------------
def export_clip(objective: CLIPObjective, out_dir: str | Path, processor=None, batch: dict | None = None,
                atol: float = 1e-4) -> dict[str, float]:
    """Write the export (layout in the module docstring), reload it with the Auto classes and compare with ours
    on ``batch`` (``pixel_values``, ``input_ids``, [``attention_mask``]); returns the check's figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objective = objective.float().cpu().eval()
    model = clip_to_transformers(objective, getattr(processor, "tokenizer", None))
    if model.config.model_type in OWN_TYPES.values():
        shutil.copyfile(remote_clip.__file__, out / MODELING_FILE)
        shutil.copyfile(remote_resnet.__file__, out / RESNET_FILE)
    model.save_pretrained(str(out))
    if processor is not None:
        processor.save_pretrained(str(out))
    return check_clip_export(objective, out, batch if batch is not None else sample_batch(objective), atol)


def sample_batch(objective: CLIPObjective, n: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch for the export check: noise images and captions of random ids ending in end-of-text."""
    g = torch.Generator().manual_seed(seed)
    a, eos = objective.text.adapter, objective.config.eos_token_id
    size = image_adapter(objective).config.image_size if is_vit(objective) else 32
    length = a.max_positions if objective.config.loss == "siglip" else length
    ids = torch.randint(2, a.vocab_size, (n, length), generator=g)
    ids[:, -1] = eos
    return {"pixel_values": torch.randn(n, 3, size, size, generator=g), "input_ids": ids}


@torch.no_grad()
def check_clip_export(objective: CLIPObjective, out_dir: str | Path, batch: dict, atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` with ``AutoModel`` (remote code only for selfsup's own class, whose code the export
    wrote) and compare logits, embeddings and loss with ours; with a processor there, its tokenizer must give
    our ids."""
    from transformers import AutoModel

    objective = objective.float().cpu().eval()
    own = json.loads((Path(out_dir) / "config.json").read_text(encoding="utf-8")).get("model_type") in OWN_TYPES.values()
    model = AutoModel.from_pretrained(str(out_dir), trust_remote_code=own).eval()
    inputs = {k: v.cpu() for k, v in batch.items() if k in ("pixel_values", "input_ids", "attention_mask")}
    theirs = model(**inputs, return_loss=True)
    image, text = objective.embed(inputs)
    logits = objective.logits(inputs)
    from selfsup.objectives.image_text.losses import clip_loss, siglip_loss

    ours_loss = clip_loss(image, text, objective.scale()) if objective.config.loss == "clip" else \
        siglip_loss(image, text, objective.scale(), objective.logit_bias)
    return {"export/max_abs_logit_diff": check_close(max_abs_diff(logits, theirs.logits_per_image), "logits", atol),
            "export/max_abs_embed_diff": check_close(max(max_abs_diff(image, theirs.image_embeds),
                                                         max_abs_diff(text, theirs.text_embeds)), "embeddings", atol),
            "export/loss_diff": check_close(abs(float(ours_loss) - float(theirs.loss)), "loss", atol)}


__all__ = ["clip_to_transformers", "clip_from_transformers", "export_clip", "check_clip_export", "hf_config",
           "to_hf_state_dict", "from_hf_state_dict", "objective_from_config", "sample_batch", 
           "OWN_TYPES"]
