"""GraphCL's augmentations: ratios, validity, per-example seeding; two-view batches the adapter reads."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected

from selfsup.modalities.graph import (DropNodes, GraphAdapter, GraphConfig, GraphViewDataset, MaskAttributes,
                                      PerturbEdges, RandomChoice, Subgraph, collate_graph_views, graphcl_augmentation,
                                      prepare_graphs, synthetic_graphs)
from selfsup.modalities.graph.views import GraphExamples, view_generator
from selfsup.types import EXAMPLE_SEEDS, VIEWS


@pytest.fixture(scope="module")
def graph() -> Data:
    """A 30-node synthetic graph with features, labels on nodes and edges, and GraphMAE's self-loops."""
    g = synthetic_graphs(3, seed=1, min_nodes=30, max_nodes=30)[1]
    g.node_labels = torch.arange(30) % 3
    g.edge_labels = torch.arange(g.num_edges) % 2
    return prepare_graphs([g], "test", self_loops=True).graphs[0]


def valid(g: Data) -> None:
    assert g.x.shape[0] == g.num_nodes == g.node_labels.shape[0]
    assert g.edge_index.shape[1] == g.edge_labels.shape[0]
    if g.edge_index.numel():
        assert 0 <= int(g.edge_index.min()) and int(g.edge_index.max()) < g.num_nodes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(a: Data, b: Data) -> bool:
    return a.num_nodes == b.num_nodes and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)


AUGMENTATIONS = [DropNodes(0.2), PerturbEdges(0.2), MaskAttributes(0.2), MaskAttributes(0.2, fill="gaussian"),
                 Subgraph(0.2), graphcl_augmentation("random4")]


@pytest.mark.parametrize("aug", AUGMENTATIONS, ids=lambda a: type(a).__name__)
def test_seeded_valid_and_the_input_untouched(graph, aug):
    before = graph.clone()
    views = [aug(graph, gen(s)) for s in (0, 0, 1, 2, 3)]
    for v in views:
        valid(v)
    assert same(views[0], views[1]), "same seed, same view"
    assert not all(same(views[0], v) for v in views[2:]), "other seeds, other views"
    assert same(graph, before) and torch.equal(graph.edge_labels, before.edge_labels)


def test_drop_nodes_keeps_the_rest_and_their_edges(graph):
    named = graph.clone()
    named.node_ids = torch.arange(30)                  # node tensors follow the nodes kept
    view = DropNodes(0.2)(named, gen(0))
    assert view.num_nodes == 30 - 6 and len(view.node_ids) == 24
    keep = view.node_ids
    assert torch.equal(view.x, graph.x[keep]) and torch.equal(view.node_labels, graph.node_labels[keep])
    inside = torch.isin(graph.edge_index, keep).all(dim=0)
    assert view.edge_index.shape[1] == int(inside.sum()), "exactly the edges between kept nodes"
    assert DropNodes(1.0)(graph, gen(0)).num_nodes == 1


def test_perturb_edges_swaps_a_ratio_and_stays_undirected(graph):
    view = PerturbEdges(0.2)(graph, gen(0))
    loops = lambda g: g.edge_index[:, g.edge_index[0] == g.edge_index[1]]  # noqa: E731
    assert torch.equal(loops(view), loops(graph)), "self-loops untouched"
    pairs = lambda g: {tuple(e) for e in g.edge_index.t().tolist() if e[0] < e[1]}  # noqa: E731
    before, after = pairs(graph), pairs(view)
    assert len(after) == len(before)
    assert len(before - after) == int(len(before) * 0.2) == len(after - before)
    assert is_undirected(view.edge_index)


def test_mask_attributes_zeroes_a_ratio_of_nodes(graph):
    view = MaskAttributes(0.2)(graph, gen(0))
    masked = (view.x != graph.x).any(dim=1)
    assert int(masked.sum()) == 6 and (view.x[masked] == 0).all()
    noisy = MaskAttributes(0.5, fill="gaussian")(graph, gen(0))
    changed = (noisy.x != graph.x).any(dim=1)
    assert int(changed.sum()) == 15 and 0.2 < float(noisy.x[changed].mean()) < 0.8, "N(0.5, 0.5^2) fill"


def test_subgraph_keeps_a_connected_ratio(graph):
    view = Subgraph(0.2)(graph, gen(0))
    assert view.num_nodes == 6
    reached, frontier = {0}, [0]                  # connected: every node is reached from node 0
    while frontier:
        node = frontier.pop()
        for nxt in view.edge_index[1][view.edge_index[0] == node].tolist():
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(range(6))
    lonely = Data(x=torch.randn(5, 2), edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=5)
    assert Subgraph(0.6)(lonely, gen(0)).num_nodes == 1, "stops at the start node's component"


def test_random_choice_uses_each_member():
    picks = RandomChoice([lambda g, r: "a", lambda g, r: "b"])
    assert {picks(None, gen(s)) for s in range(20)} == {"a", "b"}
    assert graphcl_augmentation("random2").augmentations[1].keep == 0.2
    with pytest.raises(ValueError, match="random4"):
        graphcl_augmentation("crop")


def test_two_view_batches_are_seeded_per_example(graph):
    graphs = prepare_graphs(synthetic_graphs(12, seed=0), "test").graphs
    data = GraphViewDataset(graphs, graphcl_augmentation("random3"), seed=5)
    batch = collate_graph_views([data[i] for i in range(4)])
    assert len(batch[VIEWS]) == 2 and batch[EXAMPLE_SEEDS].shape == (4,) and batch["graph_labels"].shape == (4,)
    again = collate_graph_views([data[i] for i in (3, 2, 1, 0)])   # another order, another batch: same draws
    first_graph_views = [data.view(0, v) for v in range(2)]
    for v in range(2):
        assert batch[VIEWS][v]["num_nodes"][0] == first_graph_views[v].num_nodes == again[VIEWS][v]["num_nodes"][3]
    assert torch.equal(data.view(0, 0).edge_index, data.augmentations[0](graphs[0], view_generator(5, 0, 0, 0)).edge_index)
    data.set_epoch(1)
    assert GraphExamples(graphs, seed=5)[0]["seed"] == batch[EXAMPLE_SEEDS][0]
    adapter = GraphAdapter(GraphConfig(num_features=graphs[0].x.shape[1]), hidden_size=8)
    tokens = adapter(adapter.concat_batches(batch[VIEWS]))
    assert tokens.x.shape[0] == 8, "both views joined into one batch of 8 graphs"
