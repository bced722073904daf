"""The graph adapter: padded tokens and the packed order, targets, structure, positions, joining batches."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE

from selfsup.graphs import graph_index, node_index, pack, padding_mask_for, unpack
from selfsup.modalities.graph import GraphAdapter, GraphConfig, collate_graphs, join_batches
from selfsup.types import EXAMPLE_SEEDS


def graphs(features: int = 3, labels: bool = False, edge_labels: bool = False) -> list[Data]:
    """Three small graphs: a triangle, a path of 5 nodes, a single node (no edges)."""
    edges = [torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]]),
             torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]]), torch.zeros(2, 0, dtype=torch.long)]
    out = []
    for i, e in enumerate(edges):
        n = [3, 5, 1][i]
        g = Data(x=torch.randn(n, features), edge_index=e, num_nodes=n, y=torch.tensor([i % 2]))
        if labels:
            g.node_labels = torch.arange(n) % 4
        if edge_labels:
            g.edge_labels = torch.arange(e.shape[1]) % 2
        out.append(g)
    return out


def test_pack_and_unpack_are_inverse_and_row_major():
    num_nodes = torch.tensor([3, 5, 1])
    mask = padding_mask_for(num_nodes)
    assert mask.shape == (3, 5) and mask.sum() == 15 - 9
    rows = torch.arange(9.0)[:, None].expand(9, 2)
    padded = unpack(rows, mask)
    assert padded[1, 0, 0] == 3 and padded[2, 0, 0] == 8, "graph b's node i at [b, i]"
    assert (padded[mask] == 0).all()
    assert torch.equal(pack(padded, mask), rows) and torch.equal(pack(padded, mask), padded[~mask])
    assert torch.equal(node_index(mask), (~mask).flatten().nonzero().squeeze(1))
    assert graph_index(num_nodes).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]
    assert torch.equal(unpack(torch.arange(9), mask, fill=-100)[mask], torch.full((6,), -100))


def test_collate_packs_the_graphs():
    gs = graphs(labels=True, edge_labels=True)
    batch = collate_graphs([{"graph": g, "seed": 7 + i} for i, g in enumerate(gs)])
    assert batch["num_nodes"].tolist() == [3, 5, 1]
    assert batch["node_features"].shape == (9, 3) and batch["node_labels"].shape == (9,)
    assert batch["edge_index"].shape == (2, 14) and batch["edge_labels"].shape == (14,)
    assert batch["edge_index"][:, 6:].min() == 3, "the second graph's edges are offset by the first's 3 nodes"
    assert batch["graph_labels"].tolist() == [0, 1, 0] and batch[EXAMPLE_SEEDS].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="node_labels"):
        collate_graphs([gs[0], graphs()[1]])


def test_embed_shapes_targets_and_structure():
    batch = collate_graphs(graphs(labels=True, edge_labels=True))
    adapter = GraphAdapter(GraphConfig(num_features=3, node_label_sizes=(4,), edge_label_sizes=(2,)), hidden_size=8)
    tokens = adapter.embed(batch)
    assert tokens.x.shape == (3, 5, 8) and tokens.padding_mask.tolist()[2] == [False, True, True, True, True]
    assert (tokens.x[tokens.padding_mask] == 0).all()
    expected = adapter.feature_proj(batch["node_features"]) + adapter.label_embeddings[0](batch["node_labels"])
    torch.testing.assert_close(tokens.x[~tokens.padding_mask], expected)
    torch.testing.assert_close(tokens.targets["features"][~tokens.padding_mask], batch["node_features"])
    assert (tokens.targets["labels"][tokens.padding_mask] == -100).all()
    assert tokens.structure["edge_index"] is batch["edge_index"] and tokens.structure["edge_attr"].shape == (14, 8)
    assert adapter.target_size("features") == 3 and adapter.target_size("labels") == 4
    with pytest.raises(KeyError):
        adapter.target_size("pixels")
    assert adapter.add_positions(tokens.x, tokens.padding_mask, tokens.structure) is tokens.x


def test_pass_through_features_and_the_node_token():
    batch = collate_graphs(graphs(features=4))
    raw = GraphAdapter(GraphConfig(num_features=4, node_encoder="none"))
    assert raw.hidden_size == 4 and not list(raw.parameters())
    assert torch.equal(raw.embed(batch).x, raw.embed(batch).targets["features"])
    empty = collate_graphs([Data(edge_index=g.edge_index, num_nodes=g.num_nodes) for g in graphs()])
    assert empty["node_features"].shape == (9, 0)
    token = GraphAdapter(GraphConfig(num_features=0), hidden_size=6)
    x = token.embed(empty).x
    assert torch.equal(x[0, 0], token.node_token[0]) and "features" not in token.embed(empty).targets
    with pytest.raises(ValueError, match="num_features > 0"):
        GraphConfig(num_features=0, node_encoder="none")
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        raw.embed(collate_graphs(graphs(features=3)))


def test_structural_encoding_reaches_add_positions():
    pe = AddRandomWalkPE(walk_length=4, attr_name="node_pe")
    batch = collate_graphs([pe(g) for g in graphs()])
    adapter = GraphAdapter(GraphConfig(num_features=3, pe_size=4), hidden_size=8)
    tokens = adapter(batch)
    content = adapter.embed(batch)
    added = (tokens.x - content.x)[~content.padding_mask]
    torch.testing.assert_close(added, adapter.pe_proj(batch["node_pe"]))
    assert (tokens.x[content.padding_mask] == 0).all()
    assert adapter.position_prefixes() == ("pe_proj.",)
    names = [n for n, _ in adapter.named_parameters()]
    assert all(n.startswith(adapter.content_prefixes() + adapter.position_prefixes()) for n in names)


def test_batches_join_whatever_their_sizes():
    adapter = GraphAdapter(GraphConfig(num_features=3), hidden_size=8)
    gs = graphs()
    a, b = collate_graphs(gs[:1]), collate_graphs(gs[1:])
    assert adapter.batch_signature(a) == adapter.batch_signature(b)
    joined = adapter.concat_batches([a, b])
    whole = collate_graphs(gs)
    for key in whole:
        assert torch.equal(joined[key], whole[key]), key
    assert torch.equal(join_batches([whole]).get("edge_index"), whole["edge_index"])
