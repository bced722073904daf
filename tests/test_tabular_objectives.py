"""The feature tokenizer, and the three methods on it through the existing classes: masked feature modelling (the MAE
class, loss 'mixed', against a plain reference written here, in both masking modes), SCARF (SimCLR on a row and its
corruption; the corruption's fraction and marginals tested) and data2vec."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.tabular import (CATEGORICAL, NUMERIC, TableExamples, TableViewDataset, TabularAdapter,
                                        TabularConfig, collate_rows, collate_views, corrupted_count, scarf_corrupt)
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.mae import MAEConfig, MAEObjective, take
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.two_view.build import from_encoder
from selfsup.types import NOISE, Encoder

VOCABS = (5, 4, 7)   # three categorical columns (codes 0 missing, 1 unseen, 2.. categories)


def table(rows: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 3)).astype(np.float32)
    numeric[1, 0] = numeric[4, 2] = np.nan          # missing numbers
    categorical = np.stack([rng.integers(0, v, rows) for v in VOCABS], axis=1)
    return numeric, categorical


def transformer(width=16, layers=2):
    return TransformerEncoder(transformer_config(dict(hidden_size=width, num_layers=layers, num_heads=2,
                                                      intermediate_size=2 * width), "vit"))


def parts(seed=0):
    torch.manual_seed(seed)
    return TabularAdapter(TabularConfig(3, VOCABS), 16), transformer(), transformer(layers=1)


def test_the_tokenizer_gives_one_token_per_column_with_missing_and_unseen_tokens():
    adapter = TabularAdapter(TabularConfig(2, (4,)), 8)
    batch = {NUMERIC: torch.tensor([[2.0, float("nan")], [0.5, 1.0]]), CATEGORICAL: torch.tensor([[1], [3]])}
    tokens = adapter.embed(batch)
    assert tokens.x.shape == (2, 3, 8) and tokens.padding_mask is None
    torch.testing.assert_close(tokens.x[0, 0], 2.0 * adapter.numeric_weight[0])
    torch.testing.assert_close(tokens.x[0, 1], adapter.numeric_missing[1], msg="NaN -> the missing-value token")
    torch.testing.assert_close(tokens.x[0, 2], adapter.category_embeddings.weight[1], msg="code 1: unseen token")
    full = adapter(batch)
    assert full.x.shape == (2, 4, 8) and adapter.num_prefix_tokens == 1
    torch.testing.assert_close(full.x[1, 0], adapter.cls_token[0, 0])
    torch.testing.assert_close(full.x[1, 3], adapter.category_embeddings.weight[3] + adapter.column_embeddings[2])
    assert adapter.target_classes("values") == (0, 0, 4)
    assert torch.isnan(tokens.targets["values"][0, 1, 0]) and tokens.targets["values"][1, 2, 0] == 3
    with pytest.raises(ValueError, match="categorical column 0 has a code outside 0..3"):
        adapter.embed({NUMERIC: batch[NUMERIC], CATEGORICAL: torch.tensor([[4], [0]])})


def plain_mixed_loss(logits, target, mask, classes, ce_weight, mse_weight):
    """The reference: every masked cell of every row, one at a time -- cross-entropy over the column's own outputs
    for a category, squared error for a number (a missing number not scored); the weighted sum over the count."""
    offsets = np.cumsum([0] + [max(k, 1) for k in classes])
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for n in range(mask.shape[1]):
            if not mask[b, n]:
                continue
            k, start, t = classes[n], offsets[n], float(target[b, n, 0])
            if k:
                total += ce_weight * float(F.cross_entropy(logits[b, n, start:start + k][None], torch.tensor([int(t)])))
            elif math.isnan(t):
                continue
            else:
                total += mse_weight * (float(logits[b, n, start]) - t) ** 2
            count += 1
    return total / count, count


@pytest.mark.parametrize("mode", ["drop", "replace"])
def test_masked_feature_modelling_loss_equals_a_plain_reference(mode):
    adapter, backbone, decoder = parts()
    config = MAEConfig(mask_ratio=0.5, norm_pix_loss=False, target="values", loss="mixed", mask_mode=mode,
                       ce_weight=2.0, mse_weight=0.5)
    objective = MAEObjective(adapter, backbone, decoder, config).eval()
    numeric, categorical = table()
    batch = collate_rows([{NUMERIC: n, CATEGORICAL: c} for n, c in zip(numeric, categorical)])
    noise = torch.rand(len(numeric), 6, generator=torch.Generator().manual_seed(1))
    # the missing numbers are masked, and not scored (drop keeps the lowest noise, replace masks it)
    noise[1, 0] = noise[4, 2] = 2.0 if mode == "drop" else -1.0
    batch[NOISE] = noise
    with torch.no_grad():
        out = objective(batch)
        target = adapter.embed(batch).targets["values"]
        p = adapter.num_prefix_tokens
        if mode == "drop":
            latent, _, masking = objective.encode(batch)
            h = objective.decode(latent, masking, outputs_from=p)
            logits, mask = take(objective.decoder_pred(h), masking.ids_restore), masking.mask
        else:   # the decoder's output at every position, captured in the same forward pass
            seen = {}
            hook = objective.decoder.register_forward_hook(lambda m, i, o: seen.update(h=o.last_hidden_state))
            objective(batch)
            hook.remove()
            logits = objective.decoder_pred(seen["h"][:, p:])
            mask, _ = objective.replace_masking(batch, adapter.embed(batch))
    ref, count = plain_mixed_loss(logits, target, mask, adapter.target_classes("values"), 2.0, 0.5)
    assert mask[1, 0] and mask[4, 2]
    assert int(out.num_targets) == count == int(mask.sum()) - 2
    assert float(out.loss) / count == pytest.approx(ref, rel=1e-5)
    assert 0.0 <= out.metrics["masked_accuracy"] <= 1.0 and out.metrics["masked_mse"] > 0


def test_masked_feature_modelling_trains():
    adapter, backbone, decoder = parts()
    objective = MAEObjective(adapter, backbone, decoder, MAEConfig(mask_ratio=0.5, norm_pix_loss=False,
                                                                   target="values", loss="mixed"))
    numeric, categorical = table(64)
    data = TableExamples(numeric, categorical, seed=0)
    batch = collate_rows([data[i] for i in range(64)])
    opt = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = objective(batch)
        (out.loss / out.num_targets).backward()
        opt.step(), opt.zero_grad()
        losses.append(float(out.loss.detach() / out.num_targets))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), "a fixed batch's masks (example seeds) are learned"


def test_the_mixed_loss_needs_per_position_classes():
    with pytest.raises(ValueError, match="norm_pix_loss=False"):
        MAEConfig(loss="mixed")
    with pytest.raises(ValueError, match="target_classes"):
        from selfsup.types import Adapter

        class Plain(Adapter):
            hidden_size = 16

            def target_size(self, name):
                return 4

        MAEObjective(Plain(), transformer(), transformer(layers=1), MAEConfig(loss="mixed", norm_pix_loss=False))


# -- SCARF ---------------------------------------------------------------------------------------------------------
def skewed_pool(rows: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two numeric columns (exponential; uniform on a few values) and two categorical ones (90 % / 10 %; uniform)."""
    rng = np.random.default_rng(seed)
    numeric = np.stack([rng.exponential(size=rows), rng.integers(0, 3, rows).astype(float)], 1).astype(np.float32)
    categorical = np.stack([np.where(rng.random(rows) < 0.9, 2, 3), rng.integers(2, 6, rows)], 1)
    return numeric, categorical


def test_scarf_corrupts_the_papers_fraction_of_every_row():
    numeric, categorical = skewed_pool(200)
    for rate, m in ((0.6, 4), (0.3, 4), (0.6, 14)):
        assert corrupted_count(m, rate) == int(math.floor(rate * m + 1e-9))
    data = TableViewDataset(numeric, categorical, seed=3, corruption_rate=0.6)
    masks = np.stack([data.corrupted(i)[2] for i in range(200)])
    assert (masks.sum(1) == 2).all(), "floor(0.6 * 4) = 2 features of every row, not a Bernoulli count"
    counts = masks.sum(0)
    assert counts.min() > 60 and counts.max() < 140, "the corrupted features are chosen uniformly"
    wide = np.random.default_rng(0).normal(size=(50, 14)).astype(np.float32)
    masks = [scarf_corrupt(wide[i], np.zeros(0, np.int64), wide, np.zeros((50, 0), np.int64), 0.6,
                           torch.Generator().manual_seed(i))[2] for i in range(50)]
    assert all(m.sum() == 8 for m in masks), "0.6 of 14 features: 8 (the rate is the corrupted share, not the kept one)"


def test_scarf_replacements_follow_each_features_empirical_marginal():
    pool_numeric, pool_categorical = skewed_pool()
    rows = 3000
    anchors_num = np.full((rows, 2), -7.0, np.float32)      # a value no training row has
    anchors_cat = np.full((rows, 2), 4, np.int64)
    drawn = {0: [], 1: [], 2: [], 3: []}
    for i in range(rows):
        num, cat, mask = scarf_corrupt(anchors_num[i], anchors_cat[i], pool_numeric, pool_categorical, 0.5,
                                       torch.Generator().manual_seed(i))
        for j in np.flatnonzero(mask):
            drawn[j].append(num[j] if j < 2 else cat[j - 2])
    pool_values = set(pool_numeric[:, 0].tolist())
    assert all(v in pool_values for v in drawn[0]), "numbers are training values, not uniform draws over a range"
    assert np.mean(drawn[0]) == pytest.approx(pool_numeric[:, 0].mean(), abs=0.1)   # uniform on [min, max]: ~4
    share = np.mean(np.asarray(drawn[2]) == 2)
    assert share == pytest.approx(np.mean(pool_categorical[:, 0] == 2), abs=0.03), "90 / 10, not 50 / 50"
    values, counts = np.unique(drawn[3], return_counts=True)
    assert values.tolist() == [2, 3, 4, 5] and counts.min() > 0.2 * len(drawn[3])


def test_scarf_views_are_seeded_per_example():
    numeric, categorical = skewed_pool(50)
    data = TableViewDataset(numeric, categorical, seed=5)
    a = data[7]["views"][1]
    _ = [data[i] for i in range(10)]
    b = data[7]["views"][1]
    assert np.array_equal(a[NUMERIC], b[NUMERIC]) and np.array_equal(a[CATEGORICAL], b[CATEGORICAL])
    np.testing.assert_array_equal(data[7]["views"][0][NUMERIC], numeric[7], "view 0 is the row itself")
    data.set_epoch(1)
    moved = [not np.array_equal(data[i]["views"][1][NUMERIC], TableViewDataset(numeric, categorical, seed=5)[i]
                                ["views"][1][NUMERIC]) for i in range(10)]
    assert any(moved), "another epoch, other corruptions"


def test_scarf_trains_with_simclrs_loss():
    torch.manual_seed(0)
    adapter = TabularAdapter(TabularConfig(2, (4, 6)), 16)
    objective = from_encoder("scarf", Encoder(adapter, transformer(), "first"), "tiny")
    assert objective.config.temperature == 1.0
    numeric, categorical = skewed_pool(32)
    batch = collate_views([TableViewDataset(numeric, categorical, seed=0)[i] for i in range(32)])
    out = objective(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and adapter.numeric_weight.grad.abs().sum() > 0


def test_data2vec_runs_unchanged_on_tables():
    adapter, backbone, _ = parts()
    config = Data2VecObjectiveConfig(target_layer="block", average_top_k_layers=1, ema_transformer_only=False,
                                     ema_layers_only=False)
    objective = Data2VecObjective(adapter, backbone, SpanMasker(0.5, 1, 1), config)
    numeric, categorical = table(16)
    batch = collate_rows([TableExamples(numeric, categorical, seed=0)[i] for i in range(16)])
    out = objective(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and int(out.num_targets) > 0
    objective.on_step_end(1)
