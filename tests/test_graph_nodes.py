"""Node-level data: full-graph batches, NeighborLoader mini-batches (seed nodes first, mapped back), Cora."""
import pytest
import torch

from selfsup.backbones.gnn import gin
from selfsup.modalities.graph import GraphAdapter, GraphConfig, full_graph_batch, karate_club, load_planetoid
from selfsup.modalities.graph.nodes import neighbor_loader, split_masks


def test_full_graph_batch_of_karate_club():
    graph = karate_club()
    batch = full_graph_batch(graph, seed=3)
    assert batch["num_nodes"].tolist() == [34] and batch["node_features"].shape == (34, 34)
    assert torch.equal(batch["node_ids"], torch.arange(34)) and batch["node_classes"].shape == (34,)
    assert (batch["edge_index"][0] == batch["edge_index"][1]).sum() == 34, "GraphMAE's self-loops"
    adapter = GraphAdapter(GraphConfig(num_features=34), hidden_size=8)
    tokens = adapter(batch)
    out = gin(8, 8, 2)(tokens.x, tokens.padding_mask, structure=tokens.structure).last_hidden_state
    assert out.shape == (1, 34, 8) and tokens.padding_mask is not None and not tokens.padding_mask.any()
    assert set(split_masks(graph)) == {"train_mask"}


def test_neighbor_batches_cover_the_seed_nodes_once_with_valid_sampled_edges():
    graph = karate_club()
    edges = set(map(tuple, graph.edge_index.t().tolist()))
    seen = []
    for batch in neighbor_loader(graph, num_neighbors=[3, 2], batch_size=5, seed=0):
        n, seeds = int(batch["num_nodes"]), int(batch["num_seed_nodes"])
        ids = batch["node_ids"]
        assert len(ids) == n == len(set(ids.tolist())) and seeds <= 5
        seen += ids[:seeds].tolist()
        local = batch["edge_index"]
        assert int(local.max()) < n
        assert {(int(ids[s]), int(ids[d])) for s, d in local.t().tolist()} <= edges, "sampled edges are real edges"
        fan_in = torch.bincount(local[1][local[1] < seeds], minlength=seeds)
        assert int(fan_in.max()) <= 3, "at most 3 neighbours per seed node at hop 1"
        assert torch.equal(batch["node_features"], graph.x[ids]) and torch.equal(batch["node_classes"],
                                                                                 graph.node_classes[ids])
    assert sorted(seen) == list(range(34)), "every node is a seed node exactly once per epoch"


def test_neighbor_sampling_is_seeded():
    graph = karate_club()
    runs = [[b["node_ids"].tolist() for b in neighbor_loader(graph, [4, 4], batch_size=8, seed=s)] for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.filterwarnings("error:Weights only load failed")   # never unpickled: loaded with weights_only
def test_cora_from_a_copy_with_the_public_split(shared_data):
    root = shared_data / "graphs" / "Planetoid"
    if not (root / "Cora" / "raw").is_dir():
        import pytest

        pytest.skip("Cora is absent")
    graph = load_planetoid(root, "Cora")
    assert graph.num_nodes == 2708 and graph.x.shape == (2708, 1433)
    assert graph.edge_index.shape[1] == 10556 + 2708, "the directed edges plus one self-loop per node"
    masks = split_masks(graph)
    assert [int(masks[k].sum()) for k in ("train_mask", "val_mask", "test_mask")] == [140, 500, 1000]
    sums = graph.x.sum(dim=1)
    assert torch.allclose(sums[sums > 0], torch.ones(int((sums > 0).sum()))), "row-normalised features"
    assert not (root / "Cora" / "processed").exists()
    batch = next(iter(neighbor_loader(graph, [10, 10], batch_size=64, seed=0, input_nodes=masks["train_mask"])))
    assert int(batch["num_seed_nodes"]) == 64 and masks["train_mask"][batch["node_ids"][:64]].all()
