"""Graph loaders (TU, PyG data set, saved list, CSV, built-in), GraphMAE's feature rules, and every bad input."""
import collections

import pytest
import torch
from torch_geometric.data import Data

from selfsup.backbones.gnn import gin
from selfsup.errors import SelfsupError
from selfsup.modalities.graph import (GraphAdapter, GraphConfig, builtin_graphs, collate_graphs, from_dataset,
                                      load_csv_graphs, load_saved, load_tu, prepare_graphs, synthetic_graphs)

TRIANGLE = torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]])


def runs_through(graph_set) -> torch.Tensor:
    """Collate, embed and encode the graphs; the (B, D) mean-pooled states."""
    batch = collate_graphs(graph_set.graphs)
    adapter = GraphAdapter(GraphConfig(num_features=graph_set.num_features), hidden_size=8)
    tokens = adapter(batch)
    out = gin(8, 8, 2).eval()(tokens.x, tokens.padding_mask, structure=tokens.structure).last_hidden_state
    assert torch.isfinite(out).all()
    return out


# -- loaders -----------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("error:Weights only load failed")   # never unpickled: loaded with weights_only
@pytest.mark.parametrize("name, graphs, width", [("MUTAG", 188, 7), ("PROTEINS", 1113, 3)])
def test_tu_from_a_copy_of_the_raw_files(shared_data, name, graphs, width):
    root = shared_data / "graphs" / "TUDataset"
    if not (root / name / "raw").is_dir():
        pytest.skip(f"{name} is absent")
    data = load_tu(root, name, self_loops=True)
    assert len(data) == graphs and data.num_features == width and data.features == "x" and data.num_classes == 2
    g = data.graphs[0]
    assert (g.x.sum(dim=1) == 1).all(), "one-hot node labels"
    loops = g.edge_index[0] == g.edge_index[1]
    assert loops.sum() == g.num_nodes, "GraphMAE's self-loops, one per node"
    assert not (root / name / "processed").exists(), "the shared folder is left as it was"
    if name == "MUTAG":
        assert data.edge_label_sizes == (5,) and g.edge_labels[loops].eq(4).all(), "loops get their own label"


def test_an_in_memory_dataset_instance_and_degree_features(tmp_path):
    from torch_geometric.datasets import FakeDataset

    dataset = FakeDataset(num_graphs=6, avg_num_nodes=10, num_channels=0, num_classes=2)
    data = from_dataset(dataset)
    assert len(data) == 6 and data.features == "degree"
    for g, raw in zip(data.graphs, dataset):
        degrees = torch.bincount(raw.edge_index[1], minlength=raw.num_nodes)
        assert torch.equal(g.x.argmax(dim=1), degrees), "one-hot in-degree (GraphMAE's rule)"
    assert data.num_features == max(int(torch.bincount(g.edge_index[1]).max()) for g in dataset) + 1
    capped = prepare_graphs([Data(edge_index=torch.stack([torch.arange(500), torch.zeros(500, dtype=torch.long)]),
                                  num_nodes=500)], "star")
    assert capped.num_features == 401, "degree capped at 400"


def test_a_saved_list_of_data_loads_with_weights_only(tmp_path):
    path = tmp_path / "graphs.pt"
    torch.save([Data(x=torch.randn(3, 2), edge_index=TRIANGLE, y=torch.tensor([1])) for _ in range(4)], path)
    data = load_saved(path, normalize=True)
    assert len(data) == 4 and data.num_features == 2 and data.num_classes == 2
    torch.save([{"x": torch.ones(2)}], tmp_path / "dicts.pt")
    with pytest.raises(SelfsupError, match="dicts.pt: expected a list of torch_geometric Data"):
        load_saved(tmp_path / "dicts.pt")
    torch.save([torch.nn.ReLU()], tmp_path / "code.pt")   # a module: code, not data
    with pytest.raises(SelfsupError, match="weights_only=True"):
        load_saved(tmp_path / "code.pt")


def write_csv(folder, edges: str, nodes: str | None = None, graph_rows: str | None = None):
    folder.mkdir(exist_ok=True)
    (folder / "edges.csv").write_text(edges)
    if nodes is not None:
        (folder / "nodes.csv").write_text(nodes)
    if graph_rows is not None:
        (folder / "graphs.csv").write_text(graph_rows)
    return folder


def test_csv_folder(tmp_path):
    folder = write_csv(tmp_path / "mols", "graph_id,src,dst,label\nm1,a,b,0\nm1,b,c,1\nm2,x,y,2\n",
                       "graph_id,node_id,label,charge,mass\nm1,a,0,0.5,12\nm1,b,1,0,14\nm1,c,0,1,16\n"
                       "m1,lonely,2,0,1\nm2,x,1,0,1\nm2,y,1,0,1\n", "graph_id,label\nm2,1\nm1,0\n")
    data = load_csv_graphs(folder)
    assert [g.num_nodes for g in data.graphs] == [2, 4], "graphs.csv fixes the order"
    m1 = data.graphs[1]
    assert m1.x.tolist()[0] == [0.5, 12.0] and m1.node_labels.tolist() == [0, 1, 0, 2]
    assert m1.edge_index.shape == (2, 4), "each row an undirected edge"
    assert sorted(m1.edge_labels.tolist()) == [0, 0, 1, 1] and data.edge_label_sizes == (3,)
    assert data.num_classes == 2 and [int(g.y) for g in data.graphs] == [1, 0]
    assert data.node_label_sizes == (3,)
    only_edges = load_csv_graphs(write_csv(tmp_path / "plain", "graph_id,src,dst\ng,0,1\ng,1,2\nh,5,6\n"))
    assert [g.num_nodes for g in only_edges.graphs] == [3, 2] and only_edges.features == "degree"


def test_builtin_graphs_are_seeded_balanced_and_not_told_apart_by_size():
    a, b = synthetic_graphs(60, seed=3), synthetic_graphs(60, seed=3)
    assert all(torch.equal(x.edge_index, y.edge_index) for x, y in zip(a, b))
    assert not all(torch.equal(x.edge_index, y.edge_index) for x, y in zip(a, synthetic_graphs(60, seed=4)))
    labels = [int(g.y) for g in a]
    assert collections.Counter(labels) == {0: 20, 1: 20, 2: 20}
    for cls in range(3):
        graphs = [g for g in a if int(g.y) == cls]
        per_node = sum(g.num_edges for g in graphs) / sum(g.num_nodes for g in graphs)
        assert 3.5 < per_node <= 4.0, "about 2 undirected edges per node in every class"
        assert all(12 <= g.num_nodes <= 30 for g in graphs)
    data = builtin_graphs(30)
    assert data.features == "degree" and data.num_classes == 3 and "SYNTHETIC" in data.source


# -- bad input ---------------------------------------------------------------------------------------------------
def test_a_graph_with_no_edges_works():
    data = prepare_graphs([Data(x=torch.randn(4, 2), edge_index=torch.zeros(2, 0, dtype=torch.long))], "f")
    assert runs_through(data).shape == (1, 4, 8)


def test_isolated_nodes_work():
    data = prepare_graphs([Data(x=torch.randn(5, 2), edge_index=TRIANGLE, num_nodes=5)], "f", self_loops=True)
    assert data.graphs[0].edge_index.shape == (2, 6 + 5)
    assert runs_through(data).shape == (1, 5, 8)


def test_a_graph_of_one_node_works():
    data = prepare_graphs([Data(x=torch.randn(1, 2), edge_index=torch.zeros(2, 0, dtype=torch.long)),
                           Data(x=torch.randn(3, 2), edge_index=TRIANGLE)], "f")
    assert runs_through(data).shape == (2, 3, 8)


def test_graphs_without_node_features_work():
    graphs = [Data(edge_index=TRIANGLE, num_nodes=3), Data(edge_index=TRIANGLE, num_nodes=4)]
    assert prepare_graphs(graphs, "f").features == "degree"
    none = prepare_graphs(graphs, "f", features="none")
    assert none.num_features == 0 and none.graphs[0].x.shape == (3, 0)
    batch = collate_graphs(none.graphs)
    tokens = GraphAdapter(GraphConfig(num_features=0), hidden_size=8)(batch)
    assert tokens.x.shape == (2, 4, 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_features_stop_with_the_file_and_graph(bad):
    x = torch.randn(3, 2)
    x[2, 1] = bad
    graphs = [Data(x=torch.randn(3, 2), edge_index=TRIANGLE), Data(x=x, edge_index=TRIANGLE)]
    with pytest.raises(SelfsupError, match=r"^data.pt: graph 1: node 2 has a NaN or infinite feature$"):
        prepare_graphs(graphs, "data.pt")


def test_an_edge_index_out_of_range_stops_with_the_file_and_graph():
    graphs = [Data(x=torch.randn(3, 2), edge_index=TRIANGLE), Data(x=torch.randn(2, 2), edge_index=TRIANGLE)]
    with pytest.raises(SelfsupError, match=r"^data.pt: graph 1: edge_index names node 2, but the graph has 2 nodes"):
        prepare_graphs(graphs, "data.pt")


def test_an_empty_data_set_stops(tmp_path):
    with pytest.raises(SelfsupError, match="^data.pt: no graphs$"):
        prepare_graphs([], "data.pt")
    torch.save([], tmp_path / "empty.pt")
    with pytest.raises(SelfsupError, match="empty.pt: no graphs"):
        load_saved(tmp_path / "empty.pt")


def test_a_ragged_csv_row_stops_with_its_line(tmp_path):
    folder = write_csv(tmp_path / "ragged", "graph_id,src,dst\ng,0,1\ng,1,2,7\n")
    with pytest.raises(SelfsupError, match=r"edges.csv:3: 4 fields, but the header has 3$"):
        load_csv_graphs(folder)
    folder = write_csv(tmp_path / "words", "graph_id,src,dst\ng,a,b\n", "graph_id,node_id,f\ng,a,1.5\ng,b,heavy\n")
    with pytest.raises(SelfsupError, match=r"nodes.csv:3: column f: 'heavy' is not a number"):
        load_csv_graphs(folder)
    folder = write_csv(tmp_path / "unknown", "graph_id,src,dst\ng,a,z\n", "graph_id,node_id\ng,a\n")
    with pytest.raises(SelfsupError, match=r"edges.csv:2: graph g: node 'z' is not in nodes.csv"):
        load_csv_graphs(folder)
    with pytest.raises(SelfsupError, match="no edges.csv"):
        load_csv_graphs(tmp_path)


def test_a_corrupt_saved_file_stops_with_its_name(tmp_path):
    (tmp_path / "bad.pt").write_bytes(bytes(range(256)) * 2)
    with pytest.raises(SelfsupError, match="bad.pt: not a list of torch_geometric Data objects"):
        load_saved(tmp_path / "bad.pt")


def test_an_empty_edges_csv_stops_with_its_name(tmp_path):
    (tmp_path / "edges.csv").write_text("")
    with pytest.raises(SelfsupError, match="edges.csv: the header needs the columns graph_id,src,dst"):
        load_csv_graphs(tmp_path)
