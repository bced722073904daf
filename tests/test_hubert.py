"""HuBERT: parity with transformers' HubertModel (with and without a mask), export round trip, the loss against a
plain reference, k-means, MFCC features and label alignment, a training step."""
import math

import pytest
import torch
import torch.nn.functional as F
from tests.speech_helpers import NO_DROPOUT, assert_close, audio_overrides, jitter, padded_batch

from selfsup import kmeans
from selfsup.errors import SelfsupError
from selfsup.modalities.audio_features import align_labels, mfcc_features
from selfsup.recipes.builders.clustering import hubert as build
from selfsup.objectives.clustering.hf_hubert import feature_extractor_for, from_transformers, to_transformers
from selfsup.objectives.clustering.hubert import cluster_logits

transformers = pytest.importorskip("transformers")

CLUSTERS = 12


def make(stable: bool = False, seed: int = 0, **kw):
    """A tiny objective without dropout, its weights moved away from the init so that every weight matters."""
    torch.manual_seed(seed)
    return jitter(build("tiny", num_clusters=CLUSTERS, stable_layer_norm=stable, audio=audio_overrides(stable),
                        backbone=NO_DROPOUT, **kw))


def inputs(obj, seed: int = 0):
    """Three waveforms, the second zero-padded after 2500 of 4000 samples; a fixed mask; cluster labels with
    -100 at the padded frames."""
    batch, padding, g = padded_batch(obj, seed)
    batch["cluster_labels"] = torch.randint(CLUSTERS, padding.shape, generator=g).masked_fill(padding, -100)
    return batch, padding


def hf_hidden(hf, batch, mask=None, **kw):
    return hf(batch["input_values"], attention_mask=batch["attention_mask"], mask_time_indices=mask, **kw)


# -- (a) parity with transformers' HubertModel ------------------------------------------------------------------
@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-stableLN"])
def test_hidden_states_equal_transformers_with_and_without_mask(stable):
    obj = make(stable)
    hf = to_transformers(obj)
    assert type(hf).__name__ == "HubertModel" and hf.config.do_stable_layer_norm == stable
    batch, padding = inputs(obj)
    mask, real = batch["mask_time_indices"], ~padding
    assert torch.equal(real, hf._get_feature_vector_attention_mask(padding.shape[1], batch["attention_mask"]))
    assert torch.equal(hf.masked_spec_embed, obj.mask_embedding)
    with torch.no_grad():
        plain = obj.encoder()(batch)[0].last_hidden_state
        ref = hf_hidden(hf, batch, output_hidden_states=True)
        assert_close(plain[real], ref.last_hidden_state[real], "hidden states")
        masked, _ = obj.encode(batch, mask)
        ref_masked = hf_hidden(hf, batch, mask.clone()).last_hidden_state
        assert_close(masked.last_hidden_state[real], ref_masked[real], "hidden states with mask_time_indices")
        assert (masked.last_hidden_state - plain).abs()[real].max() > 1e-2, "the mask changes the output"
        for layer in (0, 1, 2):
            feats = obj.layer_features(batch, layer)
            assert_close(feats[real], ref.hidden_states[layer][real], f"layer {layer} features")


# -- (b) export round trip -------------------------------------------------------------------------------------
def test_export_round_trip_and_head(tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoFeatureExtractor, AutoModel, HubertConfig, HubertModel

    obj = make()
    to_transformers(obj).save_pretrained(tmp_path)
    feature_extractor_for(obj).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is HubertModel
    assert loaded.config.mask_time_prob == 0.05 and loaded.config.selfsup_hubert["num_clusters"] == CLUSTERS
    assert AutoFeatureExtractor.from_pretrained(tmp_path).sampling_rate == 16000
    batch, padding = inputs(obj)
    real, mask = ~padding, batch["mask_time_indices"]
    with torch.no_grad():
        ours = obj.encoder()(batch)[0].last_hidden_state
        assert_close(ours[real], hf_hidden(loaded, batch).last_hidden_state[real], "exported hidden states")
        assert_close(obj.encode(batch, mask)[0].last_hidden_state[real],
                     hf_hidden(loaded, batch, mask.clone()).last_hidden_state[real], "exported, masked")
        back = from_transformers(tmp_path).eval()  # fresh head, settings from config.json
        assert back.config == obj.config
        assert_close(back.encoder()(batch)[0].last_hidden_state, ours, "re-imported hidden states")
        assert_close(back.mask_embedding, obj.mask_embedding, "mask embedding")
        assert not torch.equal(back.label_embeddings, obj.label_embeddings), "head starts afresh"
        save_file({k: v.contiguous() for k, v in obj.state_dict().items()}, tmp_path / "model.safetensors.ckpt")
        with_head = from_transformers(tmp_path, head=tmp_path / "model.safetensors.ckpt").eval()
        n = obj(batch).num_targets
        assert_close(with_head(batch).loss / n, obj(batch).loss / n, "loss with the head from the checkpoint")
    plain = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, conv_dim=[16, 16], conv_kernel=[10, 3],
                                     conv_stride=[5, 2], num_conv_pos_embeddings=8,
                                     num_conv_pos_embedding_groups=2))
    with pytest.raises(SelfsupError, match="num_clusters"):
        from_transformers(plain)
    assert from_transformers(plain, num_clusters=7).label_embeddings.shape == (7, 256)


# -- (c) the loss ----------------------------------------------------------------------------------------------
def reference_loss(obj, h, labels, select):
    """fairseq HubertModel.compute_pred, plainly: cosine(final_proj(h), every label embedding) / 0.1, CE, sum."""
    proj = obj.final_proj(h[select])                                                 # (M, P)
    logits = torch.cosine_similarity(proj[:, None, :], obj.label_embeddings[None, :, :], dim=-1) / 0.1
    target = labels[select]
    return F.cross_entropy(logits, target, reduction="sum"), (logits.argmax(-1) == target).float().mean(), len(target)


def test_loss_equals_plain_reference_and_unmasked_weight():
    obj = make()
    hf = to_transformers(obj)
    batch, padding = inputs(obj)
    mask, labels = batch["mask_time_indices"], batch["cluster_labels"]
    with torch.no_grad():
        h = hf_hidden(hf, batch, mask.clone()).last_hidden_state                     # transformers' encoder
        ref_m, acc_m, n_m = reference_loss(obj, h, labels, mask & ~padding)
        ref_u, acc_u, n_u = reference_loss(obj, h, labels, ~mask & ~padding)
        out = obj(batch)
        assert out.num_targets == n_m > 10
        assert_close(out.loss / n_m, ref_m / n_m, "loss per masked frame")
        assert_close(out.metrics["masked_accuracy"], acc_m, "masked accuracy")
        assert_close(out.metrics["unmasked_accuracy"], acc_u, "unmasked accuracy")
        assert_close(out.metrics["unmasked_loss"], ref_u / n_u, "unmasked loss (logged at weight 0)")
        obj.config.pred_nomask_weight = 0.5
        both = obj(batch)
        assert both.num_targets == n_m + n_u
        assert_close(both.loss / (n_m + n_u), (ref_m + 0.5 * ref_u) / (n_m + n_u), "masked + 0.5 * unmasked")
        assert (both.loss - out.loss).abs() > 1.0
        obj.config.pred_nomask_weight = 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = obj(batch)
        assert bf16.loss.dtype == torch.float32 and abs(bf16.loss / n_m - ref_m / n_m) < 0.1, "bf16 stays close"
        proj = obj.final_proj(h[mask])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = cluster_logits(proj, obj.label_embeddings, 0.1)
        assert logits.dtype == torch.float32
        assert_close(logits, cluster_logits(proj, obj.label_embeddings, 0.1), "logits under bf16 autocast", 1e-6)
        # a label sequence one frame too long is cropped, one too short leaves the last frame unscored
        longer = {**batch, "cluster_labels": torch.cat([labels, labels[:, -1:]], dim=1)}
        assert_close(obj(longer).loss, out.loss, "labels one frame longer")
        shorter = obj({**batch, "cluster_labels": labels[:, :-1]})
        assert shorter.num_targets == n_m - (mask[:, -1] & ~padding[:, -1]).sum()
        with pytest.raises(ValueError, match="frame rate"):
            obj({**batch, "cluster_labels": labels.repeat(1, 2)})
        with pytest.raises(ValueError, match="cluster_labels must be in"):
            obj({**batch, "cluster_labels": labels.clamp_min(0) + CLUSTERS})


# -- (d) k-means -----------------------------------------------------------------------------------------------
def blobs(n=6000, k=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 8
    truth = torch.randint(k, (n,), generator=g)
    return centers[truth] + torch.randn(n, d, generator=g) * 0.5, truth, centers


def purity(ids, truth, k):
    return sum(torch.bincount(truth[ids == j], minlength=k).max().item() for j in ids.unique()) / len(truth)


def test_kmeans_recovers_blobs_deterministically(tmp_path):
    x, truth, centers = blobs()
    c = kmeans.fit(x, 6, batch_size=500, iterations=30, seed=3)
    ids = kmeans.predict(x, c)
    assert purity(ids, truth, 6) == 1.0 and len(ids.unique()) == 6
    assert torch.cdist(centers, c).min(dim=1).values.max() < 0.2, "every true centre has a centroid near it"
    assert torch.equal(c, kmeans.fit(x, 6, batch_size=500, iterations=30, seed=3)), "same seed, same centroids"
    brute = torch.cdist(x.double(), c.double()).argmin(dim=1)
    assert torch.equal(kmeans.predict(x, c, chunk_size=777), brute)
    assert kmeans.inertia(x, c) == pytest.approx(torch.cdist(x.double(), c.double()).min(1).values.pow(2).sum().item(),
                                                 rel=1e-4)
    streamed = kmeans.fit([x[i:i + 1000] for i in range(0, len(x), 1000)], 6, batch_size=400, iterations=40, seed=3)
    assert purity(kmeans.predict(x, streamed), truth, 6) == 1.0, "an iterable of batches works as well"
    once = kmeans.fit(iter(x.split(1000)), 6, batch_size=400, iterations=100, seed=3, init_size=10 ** 5)
    assert purity(kmeans.predict(x, once), truth, 6) == 1.0, "a one-shot stream smaller than init_size"
    kmeans.save_centroids(tmp_path / "km.safetensors", c, {"features": "blobs"})
    assert torch.equal(kmeans.load_centroids(tmp_path / "km.safetensors"), c)
    with pytest.raises(SelfsupError):
        kmeans.load_centroids(tmp_path / "missing.safetensors")


# -- (e) MFCC features and label alignment ---------------------------------------------------------------------
def test_mfcc_features_and_align_labels():
    from torchaudio.functional import compute_deltas

    wav = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    feats = mfcc_features(wav)
    assert feats.shape == (1 + (16000 - 400) // 160, 39) == (98, 39) and torch.isfinite(feats).all()
    assert torch.allclose(feats[:, 13:26], compute_deltas(feats[:, :13].T).T)
    assert mfcc_features(wav[:300]).shape == (0, 39)
    labels = torch.arange(98)
    assert torch.equal(align_labels(labels, 49), labels[::2]), "100 Hz -> 50 Hz: every second label (fairseq)"
    assert torch.equal(align_labels(labels, 98, 100, 100), labels)
    tail = align_labels(labels, 52)
    assert tail.shape == (52,) and (tail[49:] == -100).all()
    batch = torch.stack([labels, labels.masked_fill(labels >= 60, -100)])
    assert align_labels(batch, 49).shape == (2, 49) and (align_labels(batch, 49)[1, 30:] == -100).all()


# -- (f) training ----------------------------------------------------------------------------------------------
def test_training_step_on_mfcc_kmeans_labels():
    torch.manual_seed(0)
    obj = build("tiny", num_clusters=8, feature_penalty_weight=10.0).train()
    batch, padding = inputs(obj)
    # iteration-1 targets: MFCC k-means ids at 100 Hz, resampled to the tiny encoder's frame rate
    frame_rate = 16000 / math.prod(obj.adapter.config.conv_stride)
    mfcc = [mfcc_features(w[m.bool()]) for w, m in zip(batch["input_values"], batch["attention_mask"])]
    centroids = kmeans.fit(torch.cat(mfcc), 8, batch_size=64, iterations=10, seed=0)
    labels = torch.stack([align_labels(kmeans.predict(f, centroids), padding.shape[1], 100, frame_rate)
                          for f in mfcc])
    out = obj({"input_values": batch["input_values"], "attention_mask": batch["attention_mask"],
               "cluster_labels": labels})  # the objective draws its own mask
    assert torch.isfinite(out.loss) and out.num_targets > 0
    assert 0 <= out.metrics["masked_accuracy"] <= 1 and out.metrics["feature_penalty"] > 0
    out.loss.backward()
    for name in ("label_embeddings", "final_proj.weight", "mask_embedding", "adapter.conv_layers.0.conv.weight",
                 "adapter.pos_conv.conv.parametrizations.weight.original0", "backbone.layers.0.attn.qkv.weight"):
        grad = dict(obj.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert obj.training and obj.layer_features(batch, 1).shape == (3, padding.shape[1], 64) and obj.training
