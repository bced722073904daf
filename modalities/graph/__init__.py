"""Graphs: the adapter, loading, collation, GraphCL augmentations and node-level sampling.

Batch format
------------
A collated batch of B graphs is a dict of tensors, packed as PyG packs a ``Batch`` (T = the nodes of the whole
batch, graph 0's nodes first, E = its edges):

================  ===============  ======================================================================
key               shape, dtype     what
================  ===============  ======================================================================
node_features     (T, F) float     continuous node features (F may be 0: none)
node_labels       (T,) / (T, k)    optional categorical node labels (atom types, ...), long
edge_index        (2, E) long      edges source -> target, numbered in the packed nodes (row 0 sources)
edge_labels       (E,) / (E, k)    optional categorical edge labels (bond types, ...), long
num_nodes         (B,) long        nodes per graph
node_pe           (T, K) float     optional structural encoding (random-walk / Laplacian, from
                                   ``torch_geometric.transforms.AddRandomWalkPE`` /
                                   ``AddLaplacianEigenvectorPE`` with ``attr_name="node_pe"``)
graph_labels      (B,) long        graph classes, when the data has them (evaluation)
example_seeds     (B,) long        per-example seeds (``selfsup.data.example_seed``) for the objective's draws
node_ids          (T,) long        node-level data: each node's id in the big graph
node_classes      (T,) long        node-level data: each node's class (the probe's target)
num_seed_nodes    (1,) long        neighbour-sampled mini-batches: the first ``num_seed_nodes`` nodes are
                                   the seed nodes
views             list of batches  two-view training (GraphCL): one batch of this format per view
================  ===============  ======================================================================

:class:`GraphAdapter` reads ``node_features``, ``node_labels``, ``edge_index``, ``edge_labels``, ``num_nodes``
and ``node_pe`` (its ``batch_keys``) and hands a backbone padded tokens (B, N_max, D) with the graph structure
in ``Tokens.structure``.

A single graph, before collation, is a ``torch_geometric.data.Data`` with ``x`` (n, F), ``edge_index`` (2, e) and
optionally ``node_labels``, ``edge_labels``, ``node_pe``, ``y`` (its class), ``node_ids``, ``node_classes``; every
loader gives graphs in this form (``data.prepare_graphs``).

CSV format
----------
A folder with ``edges.csv`` (``graph_id,src,dst[,label...]``, one undirected edge per row), optionally
``nodes.csv`` (``graph_id,node_id[,label...][,feature columns...]``) and ``graphs.csv`` (``graph_id,label``);
columns named ``label`` or ``label_<name>`` are categorical, the other node columns float features. Details in
:mod:`selfsup.modalities.graph.csv_graphs`.

Where things are
----------------
``adapter.py`` (:class:`GraphAdapter`, :class:`GraphConfig`), ``batch.py`` (keys, :func:`collate_graphs`,
joining), ``data.py`` (checks, GraphMAE's feature rules, TU / PyG data set / saved-list loaders),
``csv_graphs.py``, ``synthetic.py`` (the built-in default), ``augment.py`` (GraphCL's augmentations),
``views.py`` (seeded examples and two-view batches), ``nodes.py`` (Cora, KarateClub, full-graph and
``NeighborLoader`` batches). The padding helpers shared with the GNN backbones are in :mod:`selfsup.graphs`.
"""
from selfsup.modalities.graph.adapter import GraphAdapter, GraphConfig
from selfsup.modalities.graph.augment import (DropNodes, Identity, MaskAttributes, PerturbEdges, RandomChoice,
                                              Subgraph, graphcl_augmentation)
from selfsup.modalities.graph.batch import ADAPTER_KEYS, collate_graphs, join_batches
from selfsup.modalities.graph.csv_graphs import load_csv_graphs
from selfsup.modalities.graph.data import GraphSet, from_dataset, load_saved, load_tu, prepare_graphs, random_walk_encoding
from selfsup.modalities.graph.nodes import full_graph_batch, karate_club, load_planetoid, neighbor_loader
from selfsup.modalities.graph.synthetic import builtin_graphs, synthetic_graphs
from selfsup.modalities.graph.views import GraphExamples, GraphViewDataset, collate_graph_views

__all__ = ["GraphAdapter", "GraphConfig", "collate_graphs", "join_batches", "ADAPTER_KEYS", "GraphSet",
           "prepare_graphs", "random_walk_encoding", "load_tu", "from_dataset", "load_saved", "load_csv_graphs", "builtin_graphs",
           "synthetic_graphs", "DropNodes", "PerturbEdges", "MaskAttributes", "Subgraph", "Identity", "RandomChoice",
           "graphcl_augmentation", "GraphExamples", "GraphViewDataset", "collate_graph_views", "load_planetoid",
           "karate_club", "full_graph_batch", "neighbor_loader"]
