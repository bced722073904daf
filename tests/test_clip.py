"""CLIP / SigLIP: the losses against plain references and against transformers' CLIPModel / SiglipModel on the
same weights, the export to (and import from) transformers for every tower, the logit-scale clamp, and the
caption tokenizer."""
import logging
import math

import pytest
import torch

from selfsup.modalities.image_text import train_caption_tokenizer
from selfsup.objectives.image_text import losses as L
from selfsup.recipes.builders.image_text import clip
from selfsup.objectives.image_text.hf_clip import (clip_from_transformers, export_clip, from_hf_state_dict,
                                                   objective_from_config, sample_batch)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def ref_clip(image, text, scale):
    """CLIP's Figure 3, one example at a time: -log softmax over texts per image and over images per text."""
    n, total = len(image), 0.0
    for i in range(n):
        row = [scale * float(image[i] @ text[j]) for j in range(n)]
        col = [scale * float(image[j] @ text[i]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def ref_siglip(image, text, scale, bias):
    """SigLIP's Algorithm 1: -sum log sigmoid(z_ij * (t * x_i . y_j + b)) / n, z = 1 on the diagonal, else -1."""
    n, total = len(image), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (scale * float(image[i] @ text[j]) + bias)))
    return total / n


def test_losses_match_plain_references():
    image, text = unit(randn(6, 5, seed=1)), unit(randn(6, 5, seed=2))
    for scale in (1.0, 14.3):
        assert abs(float(L.clip_loss(image, text, scale)) - ref_clip(image, text, scale)) < 1e-10
        assert abs(float(L.clip_loss(image, text, scale, local_loss=True)) - ref_clip(image, text, scale)) < 1e-10
        for bias in (-10.0, 0.5):
            got = float(L.siglip_loss(image, text, scale, bias))
            assert abs(got - ref_siglip(image, text, scale, bias)) < 1e-10
    swapped = float(L.clip_loss(image, text.flip(0), 14.3))   # the pairing matters
    assert abs(swapped - ref_clip(image, text, 14.3)) > 0.1


def test_losses_gradcheck_and_shape_errors():
    image, text = unit(randn(3, 4, seed=3)).requires_grad_(), unit(randn(3, 4, seed=4)).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: L.clip_loss(a, b, s), (image, text, scale))
    assert torch.autograd.gradcheck(lambda a, b, s, c: L.siglip_loss(a, b, s, c), (image, text, scale, bias))
    with pytest.raises(ValueError, match="same"):
        L.clip_loss(randn(3, 4), randn(2, 4), 1.0)


def hf_tiny(loss, eos_token_id=1):
    """A randomly initialised tiny CLIPModel / SiglipModel (transformers' own init)."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tower, vocab_size=99, max_position_embeddings=64 if loss == "siglip" else 20,
                eos_token_id=eos_token_id, pad_token_id=1, bos_token_id=0)
    vision = dict(tower, image_size=32, patch_size=8)
    torch.manual_seed(3)
    if loss == "clip":
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model = SiglipModel(SiglipConfig(text_config=dict(text, projection_size=32), vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-3.0)
    return model


def hf_batch(loss, n=5, eos=1):
    g = torch.Generator().manual_seed(4)
    length = 64 if loss == "siglip" else 12
    ids = torch.randint(2, 98, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for row, end in enumerate((4, 7, 11, 5, 9)[:n]):   # CLIP: captions of different lengths, right-padded with eos
        ids[row, 0], ids[row, end] = 0, eos
        if loss == "clip":
            ids[row, end + 1:], mask[row, end + 1:] = eos, 0
    batch = {"pixel_values": torch.randn(n, 3, 32, 32, generator=g), "input_ids": ids}
    if loss == "clip":
        batch["attention_mask"] = mask
    return batch


@pytest.mark.parametrize("loss,legacy", [("clip", False), ("siglip", False), ("clip", True)])
def test_loss_and_logits_equal_transformers(loss, legacy):
    """Our objective holding a transformers model's weights gives its loss and logits (fp32, 1e-5). legacy: a
    config with eos_token_id 2 (openai's checkpoints), which transformers pools at the largest id (98 here)."""
    model = hf_tiny(loss, eos_token_id=2 if legacy else 1)
    ours = objective_from_config(model.config).eval()
    from_hf_state_dict(ours, model.state_dict())
    batch = hf_batch(loss, eos=98 if legacy else 1)
    assert ours.config.eos_token_id == (98 if legacy else 1)
    with torch.no_grad():
        theirs = model(**batch, return_loss=True)
        out, logits = ours(batch), ours.logits(batch)
    assert torch.allclose(logits, theirs.logits_per_image, atol=1e-5), (logits - theirs.logits_per_image).abs().max()
    assert abs(float(out.loss) - float(theirs.loss)) < 1e-5
    assert float(theirs.logits_per_image.std()) > 1e-3   # not a comparison of constants
    if loss == "clip":   # padding really is there, and the eos pooling finds the first end-of-text token
        assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()


@pytest.mark.parametrize("loss,backbone", [("clip", "vit"), ("siglip", "vit"), ("clip", "resnet_tiny"),
                                           ("siglip", "resnet_tiny")])
def test_export_loads_with_auto_classes_and_imports_back(tmp_path, loss, backbone):
    torch.manual_seed(0)
    objective = clip("tiny", loss, backbone, vocab_size=120).eval()
    with torch.no_grad():   # move off the initial values so the check sees the logit scale and bias travel
        objective.logit_scale.add_(0.3)
        if objective.logit_bias is not None:
            objective.logit_bias.add_(2.0)
    figures = export_clip(objective, tmp_path / "export")
    assert set(figures) == {"export/max_abs_logit_diff", "export/max_abs_embed_diff", "export/loss_diff"}
    assert max(figures.values()) < 1e-4
    kind = __import__("json").loads((tmp_path / "export" / "config.json").read_text())["model_type"]
    assert kind == {("clip", "vit"): "clip", ("siglip", "vit"): "siglip"}.get((loss, backbone), f"selfsup_{loss}")
    assert (tmp_path / "export" / "modeling_selfsup_clip.py").is_file() == (backbone != "vit")
    back = clip_from_transformers(tmp_path / "export").eval()
    batch = sample_batch(objective)
    with torch.no_grad():
        assert torch.allclose(back.logits(batch), objective.logits(batch), atol=1e-5)
    assert float(back.scale().detach()) == pytest.approx(float(objective.scale().detach()))


def test_logit_scale_starts_at_1_over_0_07_and_is_clamped_at_100(caplog):
    objective = clip("tiny", "clip", vocab_size=120)
    assert float(objective.scale().detach()) == pytest.approx(1 / 0.07)
    assert float(clip("tiny", "siglip", vocab_size=50).scale().detach()) == pytest.approx(10.0)
    with torch.no_grad():
        objective.logit_scale.fill_(math.log(250.0))
    with caplog.at_level(logging.WARNING):
        objective.on_step_end(1)
        objective.on_step_end(2)   # still there: no second warning
    assert float(objective.scale()) == pytest.approx(100.0)
    assert sum("upper end" in r.message for r in caplog.records) == 1
    with torch.no_grad():
        objective.logit_scale.fill_(-1.0)
    with caplog.at_level(logging.WARNING):
        objective.on_step_end(3)
    assert float(objective.scale()) == pytest.approx(1.0) and any("lower end" in r.message for r in caplog.records)
    b = hf_batch("clip", 3)
    assert float(objective(b).metrics["logit_scale"]) == pytest.approx(1.0)


def test_caption_tokenizer_is_deterministic_reloads_identically_and_has_no_unknowns(tmp_path):
    from transformers import AutoTokenizer

    texts = [f"a photo of a {c}." for c in ("cat", "dog", "ship", "truck", "frog")] * 3 + ["a blurry photo of the cat."]
    first, second = train_caption_tokenizer(texts, 600), train_caption_tokenizer(list(reversed(texts)), 600)
    assert first.get_vocab() == second.get_vocab()
    assert 514 < len(first) <= 600 and first.eos_token_id == first.pad_token_id == 1 and first.bos_token_id == 0
    first.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    probe = ["a photo of a cat.", "This is a photo of ünïcode 😀!", "A PHOTO   of a Dog"]
    assert reloaded(probe)["input_ids"] == first(probe)["input_ids"]
    ids = first(probe)["input_ids"]
    assert all(row[0] == 0 and row[-1] == 1 and 1 not in row[1:-1] for row in ids)   # the only eos is the last
    assert len(ids[0]) < len("a photo of a cat.") + 2   # merges learned: fewer tokens than bytes
    siglip = train_caption_tokenizer(texts, 600, context_length=64, attention_mask=False)
    assert list(siglip("a cat", padding="max_length", max_length=64)) == ["input_ids"]
