"""The MLP backbone (``--backbone mlp`` of the tabular recipe): on the feature tokenizer it is an MLP on the scaled
numbers and one-hot categories (a plain reference written here), one output token per row, every layer's output
on request, and clear errors for padding and for tokens of the wrong shape."""
import pytest
import torch

from selfsup.backbones.mlp import MLPBackbone, MLPConfig
from selfsup.modalities.tabular import TabularAdapter, TabularConfig
from selfsup.types import Encoder


def test_on_the_tokenizer_it_is_a_plain_mlp_on_numbers_and_one_hot_categories():
    torch.manual_seed(0)
    vocab = (4, 5)
    adapter = TabularAdapter(TabularConfig(num_numeric=2, vocab_sizes=vocab, cls_token=False), 3)
    backbone = MLPBackbone(MLPConfig(num_tokens=4, token_size=3, hidden_size=6, num_layers=3))
    encoder = Encoder(adapter, backbone, "first")
    numeric = torch.tensor([[0.5, -1.0], [2.0, float("nan")]])
    categorical = torch.tensor([[2, 4], [0, 3]])
    got = encoder.features({"numeric": numeric, "categorical": categorical})

    # the reference: token j = x_j * W_j + b_j (a number), E_j[c] + b_j (a category), flattened, then
    # Linear -> ReLU -> Linear -> ReLU -> Linear
    w, miss, pos = adapter.numeric_weight, adapter.numeric_missing, adapter.column_embeddings
    table = adapter.category_embeddings.weight
    rows = []
    for r in range(2):
        tokens = []
        for j in range(2):
            x = numeric[r, j]
            tokens.append((miss[j] if torch.isnan(x) else x * w[j]) + pos[j])
        for j, size in enumerate(vocab):
            one_hot = torch.zeros(size)
            one_hot[categorical[r, j]] = 1.0
            tokens.append(one_hot @ table[sum(vocab[:j]):sum(vocab[:j]) + size] + pos[2 + j])
        h = torch.cat(tokens)
        for i, layer in enumerate(backbone.layers):
            h = layer.weight @ h + layer.bias
            if i < 2:
                h = torch.relu(h)
        rows.append(h)
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-5, atol=1e-6)
    assert encoder.feature_size == 6


def test_one_output_token_and_every_layers_output():
    backbone = MLPBackbone(MLPConfig(num_tokens=5, token_size=4, hidden_size=8, num_layers=2, activation="gelu"))
    x = torch.randn(3, 5, 4)
    out = backbone(x, None, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 1, 8)
    assert [tuple(h.shape) for h in out.hidden_states] == [(3, 5, 4), (3, 1, 8), (3, 1, 8)]
    assert torch.equal(out.hidden_states[0], x) and torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert backbone(x).hidden_states is None


def test_padding_and_wrong_shapes_are_refused():
    backbone = MLPBackbone(MLPConfig(num_tokens=5, token_size=4, hidden_size=8, num_layers=2))
    with pytest.raises(ValueError, match=r"expected tokens of shape \(B, 5, 4\), got \(2, 4, 4\)"):
        backbone(torch.randn(2, 4, 4))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(ValueError, match="no padding"):
        backbone(torch.randn(2, 5, 4), mask)
    assert backbone(torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool)).last_hidden_state.shape == (2, 1, 8)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        MLPConfig(num_tokens=1, token_size=1, activation="tanh")
