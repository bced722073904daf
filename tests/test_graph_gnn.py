"""GIN and GAT backbones against plain references, the padded contract against PyG on the packed graph."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.gnn import GNNBackbone, GNNConfig, decoder_config, gat, gin, gnn_config
from selfsup.backbones.gnn_layers import PReLU
from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.graphs import Adjacency, adjacency, pack, padding_mask_for, unpack
from tests.graph_checks import racy_gathers

NUM_NODES = torch.tensor([4, 6, 1])


@pytest.fixture
def packed():
    """Three graphs (4, 6 and 1 nodes) with random edges, self-loops and a repeated edge, packed; features 5."""
    g = torch.Generator().manual_seed(0)
    edges, start = [], 0
    for n in NUM_NODES.tolist():
        e = torch.randint(n, (2, 2 * n), generator=g) + start
        edges += [e, e.flip(0), torch.arange(start, start + n).repeat(2, 1)]
        start += n
    edge_index = torch.cat(edges + [edges[0][:, :1]], dim=1)
    return torch.randn(11, 5, generator=g), edge_index


def dense_adjacency(edge_index, n):
    a = torch.zeros(n, n)
    a.index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.shape[1]), accumulate=True)
    return a                                   # a[i, j] = number of edges j -> i


def test_gin_layer_is_mlp_of_self_plus_neighbour_sum(packed):
    x, edge_index = packed
    model = gin(5, 8, 2).eval()
    a = dense_adjacency(edge_index, 11)
    h = x
    for layer in model.layers:                  # GIN (Xu et al.): MLP((1 + eps) x + A x), eps = 0, then norm, act
        h = layer.act(layer.norm(layer.conv.nn((1 + 0.0) * h + a @ h)))
    out = model(unpack(x, padding_mask_for(NUM_NODES)), padding_mask_for(NUM_NODES), structure={"edge_index": edge_index})
    torch.testing.assert_close(pack(out.last_hidden_state, padding_mask_for(NUM_NODES)), h, rtol=1e-5, atol=1e-5)


def test_gat_layer_is_attention_over_incoming_edges(packed):
    x, edge_index = packed
    model = gat(5, 8, 1, heads=2, dropout=0.0, attention_dropout=0.0).eval()
    conv = model.layers[0].conv
    wx = conv.lin(x).view(11, 2, 4)
    score_src, score_dst = (wx * conv.att_src).sum(-1), (wx * conv.att_dst).sum(-1)      # (T, H)
    a = dense_adjacency(edge_index, 11)
    logits = F.leaky_relu(score_dst[:, None, :] + score_src[None, :, :], 0.2)            # (i, j, H)
    weights = torch.where(a[..., None] > 0, logits.exp() * a[..., None], torch.zeros(()))
    alpha = weights / weights.sum(dim=1, keepdim=True)
    expected = torch.einsum("ijh,jhc->ihc", alpha, wx).reshape(11, 8) + conv.bias
    mask = padding_mask_for(NUM_NODES)
    out = model(unpack(x, mask), mask, structure={"edge_index": edge_index}).last_hidden_state
    torch.testing.assert_close(pack(out, mask), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(model.layers[0].act, nn.Identity), "GraphMAE: a one-layer encoder has no activation"


@pytest.mark.parametrize("kind", ["gin", "gat"])
def test_padded_contract_equals_pyg_modules_on_the_packed_graph(packed, kind):
    x, edge_index = packed
    model = GNNBackbone(gnn_config("tiny", 5, kind=kind, residual=True, dropout=0.0, attention_dropout=0.0)).eval()
    mask = padding_mask_for(NUM_NODES)
    out = model(unpack(x, mask), mask, output_hidden_states=True, structure={"edge_index": edge_index})
    h, states = x, [x]
    for layer in model.layers:                   # edge_index path: PyG's GINConv / GATConv forward
        h = layer(h, edge_index)
        states.append(h)
    assert len(out.hidden_states) == model.config.num_layers + 1
    for ours, ref in zip(out.hidden_states, states):
        torch.testing.assert_close(pack(ours, mask), ref, rtol=1e-5, atol=1e-5)
        assert (ours[mask] == 0).all()
    assert out.last_hidden_state.shape == (3, 6, model.hidden_size) and model.config.num_layers == 2


def test_sparse_gradients_equal_pyg_scatter_gradients(packed):
    x, edge_index = packed
    model = gin(5, 8, 3, dropout=0.0)
    grads = []
    for path in ("sparse", "scatter"):
        model.zero_grad()
        inputs = x.clone().requires_grad_(True)
        graph = Adjacency(edge_index, 11) if path == "sparse" else edge_index
        h = inputs
        for layer in model.layers:
            h = layer(h, graph)
        h.pow(2).sum().backward()
        grads.append([inputs.grad] + [p.grad.clone() for p in model.parameters()])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4)   # batch norm in training mode amplifies rounding


def test_no_racy_gathers_and_the_adjacency_is_built_once(packed):
    x, edge_index = packed
    mask = padding_mask_for(NUM_NODES)
    structure = {"edge_index": edge_index}
    encoder, decoder = gin(5, 8, 2), GNNBackbone(decoder_config(gin(5, 8, 2).config, 5))
    inputs = unpack(x, mask).requires_grad_(True)
    hidden = encoder(inputs, mask, structure=structure).last_hidden_state
    cached = structure["adjacency"]
    recon = decoder(hidden, mask, structure=structure).last_hidden_state
    assert structure["adjacency"] is cached and adjacency(structure, 11) is cached
    assert adjacency({"edge_index": edge_index.clone()}, 11) is not cached
    loss = recon.pow(2).sum()
    assert racy_gathers(loss) == []
    assert recon.shape == (3, 6, 5)


def test_graphmae_wiring_of_last_layers():
    enc = gin(7, 32, 5).config
    dec = GNNBackbone(decoder_config(enc, 7))
    last = dec.layers[0]
    assert dec.config.num_layers == 1 and dec.hidden_size == 7
    assert isinstance(last.norm, nn.Identity) and isinstance(last.act, nn.Identity) and last.res is None
    assert isinstance(last.conv.nn[1], GlobalBatchNorm), "the decoder's MLP keeps its inner norm (global batch)"
    no_norm = gin(7, 32, 2, norm="none")
    assert isinstance(no_norm.layers[-1].act, nn.Identity) and isinstance(no_norm.layers[0].act, PReLU)
    gat_dec = GNNBackbone(decoder_config(gat(20, 16, 2).config, 20))
    assert gat_dec.layers[0].conv.heads == 1 and isinstance(gat_dec.layers[0].act, nn.Identity)
    acts = [layer.act for layer in gin(7, 8, 3).layers] + [layer.conv.nn[2] for layer in gin(7, 8, 3).layers]
    assert len({id(a) for a in acts}) == len(acts), "a PReLU of its own per place"
    with pytest.raises(ValueError, match="not divisible"):
        GNNConfig(kind="gat", hidden_size=10, heads=4)


def test_gat_init_is_graphmaes_xavier_normal():
    torch.manual_seed(0)
    conv = gat(256, 512, 2, heads=4).layers[1].conv
    gain = nn.init.calculate_gain("relu")
    expected = gain * (2.0 / (512 + 512)) ** 0.5          # xavier normal std of the (512, 512) projection
    assert abs(conv.lin.weight.std().item() - expected) < 0.05 * expected
    assert conv.bias.abs().max() == 0


def test_prelu_matches_torch():
    x = torch.randn(50, 7)
    x[0, 0] = 0.0
    ours, ref = PReLU(), nn.PReLU()
    ref.weight.data.fill_(0.3)
    ours.weight.data.fill_(0.3)
    g = torch.randn(50, 7)
    a = torch.autograd.grad(ours(x.requires_grad_(True)), (x, ours.weight), g)
    b = torch.autograd.grad(ref(x), (x, ref.weight), g)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    per_channel = PReLU(7)
    torch.testing.assert_close(per_channel(x), F.prelu(x, per_channel.weight))


def test_bf16_autocast_runs(packed):
    x, edge_index = packed
    mask = padding_mask_for(NUM_NODES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gin(5, 8, 2)(unpack(x, mask), mask, structure={"edge_index": edge_index}).last_hidden_state
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
