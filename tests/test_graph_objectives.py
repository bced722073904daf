"""Objectives on graphs through the classes every other modality uses: GraphMAE is the MAE class (its loss equal
to the paper's formula computed on plain torch_geometric modules), GraphCL the SimCLR class, data2vec the data2vec
class; each trains on graphs, and none of them asks which modality it sees."""
import dataclasses

import pytest
import torch

from benchmarks.graphmae_reference import GraphMAE as ReferenceGraphMAE
from benchmarks.graphmae_reference import copy_weights, formula_loss, lowest_noise_nodes
from selfsup.modalities.graph import GraphViewDataset, builtin_graphs, collate_graph_views, collate_graphs
from selfsup.modalities.graph.augment import Identity, graphcl_augmentation
from selfsup.objectives import registry
from selfsup.objectives.masked.data2vec import Data2VecObjective
from selfsup.objectives.masked.mae import MAEObjective
from selfsup.objectives.two_view.losses import nt_xent
from selfsup.objectives.two_view.simclr import SimCLR
from selfsup.recipes._graph import GraphRun, build_objective
from selfsup.types import NOISE


@pytest.fixture(scope="module")
def graphs():
    return builtin_graphs(24, seed=3, self_loops=True)


def graphmae_run(**kw) -> GraphRun:
    base = dict(method="graphmae", backbone="gin", node_encoder="none", hidden_size=16, num_layers=3,
                norm="batchnorm", activation="prelu", dropout=0.0, mask_ratio=0.5, replace_rate=0.0, sce_alpha=2.0)
    return GraphRun(**{**base, **kw})


def copy_into_reference(ours: MAEObjective, in_dim: int, hidden: int, layers: int, alpha: float) -> ReferenceGraphMAE:
    """The plain-PyG GraphMAE of benchmarks/graphmae_reference.py with our weights, parameter for parameter."""
    ref = ReferenceGraphMAE(in_dim, dict(num_hidden=hidden, num_layers=layers, in_drop=0.0, mask_rate=0.5,
                                         replace_rate=0.0, alpha_l=alpha))
    return copy_weights(ours, ref)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_graphmae_loss_is_the_papers_formula_on_plain_pyg(graphs, alpha):
    torch.manual_seed(0)
    run = graphmae_run(sce_alpha=alpha)
    ours = build_objective(run, graphs.num_features, 10)
    assert type(ours) is MAEObjective
    with torch.no_grad():                           # a mask token and weights that are not at their init
        ours.encoder_mask_token.normal_()
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = copy_into_reference(ours, graphs.num_features, 16, 3, alpha)
    batch = collate_graphs([graphs[i] for i in range(8)])
    counts = batch["num_nodes"].tolist()
    noise = torch.rand(len(counts), max(counts))
    batch[NOISE] = noise
    mask_nodes = lowest_noise_nodes(noise, counts, 0.5)     # each graph masks int(0.5 n), the lowest noise
    out = ours(batch)
    expected = formula_loss(ref, batch["node_features"].float(), batch["edge_index"], mask_nodes, alpha)
    assert out.num_targets == len(mask_nodes)
    torch.testing.assert_close(out.loss / out.num_targets, expected, rtol=1e-5, atol=1e-6)
    (out.loss / out.num_targets).backward()
    expected.backward()
    torch.testing.assert_close(ours.encoder_mask_token.grad, ref.enc_mask_token.grad[0], rtol=1e-4, atol=1e-6)


def test_graphmae_random_replacement_rate_and_batch_independence(graphs):
    torch.manual_seed(0)
    ours = build_objective(graphmae_run(replace_rate=0.3), graphs.num_features, 10)
    examples = [{"graph": graphs[i % len(graphs)], "seed": 1000 + i} for i in range(200)]
    batch = collate_graphs(examples)
    tokens = ours.adapter.embed(batch)
    mask, source = ours.replace_masking(batch, tokens)
    counts = batch["num_nodes"]
    assert mask.sum().item() == sum(int(0.5 * n) for n in counts.tolist())
    replaced = mask & (source != torch.arange(mask.shape[1]))
    drawn = (mask & (source >= 0)).sum().item()
    # a replaced node may draw itself (GraphMAE draws from all the nodes), so the observed share is a little lower
    share = replaced.sum().item() / drawn
    assert 0.22 < share < 0.32, share
    assert not (replaced & tokens.padding_mask).any()
    assert (source < counts[:, None])[mask].all(), "a replacement comes from the same graph's real nodes"
    alone = collate_graphs(examples[5:6])
    mask1, source1 = ours.replace_masking(alone, ours.adapter.embed(alone))
    n = int(counts[5])
    assert torch.equal(mask1[0, :n], mask[5, :n]) and torch.equal(source1[0, :n], source[5, :n])


def test_the_same_classes_train_graphs_images_audio_and_text(graphs):
    """The registry's class for each method is the one the graph recipe builds and the one the image, audio and
    text recipes build."""
    from selfsup.recipes.builders.masked import data2vec_audio, data2vec_text, mae
    from selfsup.recipes.builders.two_view import two_view

    assert registry.get("graphmae").objective == registry.get("mae").objective == "MAEObjective"
    assert registry.get("graphcl").objective == registry.get("simclr").objective == "SimCLR"
    graph_mae = build_objective(graphmae_run(), graphs.num_features, 10)
    graph_cl = build_objective(GraphRun(method="graphcl", model_size="tiny", hidden_size=16, num_layers=2),
                               graphs.num_features, 10)
    graph_d2v = build_objective(GraphRun(method="data2vec", hidden_size=16, num_layers=2), graphs.num_features, 10)
    assert type(graph_mae) is type(mae("tiny")) is MAEObjective
    assert type(graph_cl) is type(two_view("simclr", "resnet_tiny", "tiny")) is SimCLR
    assert type(graph_d2v) is type(data2vec_audio("tiny")) is type(data2vec_text("tiny", 64, 3, 0)) is Data2VecObjective


def train_steps(objective, batches, steps=3):
    opt = torch.optim.Adam(objective.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        out = objective(batches[step % len(batches)])
        loss = out.loss / (out.num_targets or 1)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in objective.encoder().parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), "the encoder learns"
        opt.step()
        objective.on_step_end(step + 1)
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    return losses


@pytest.mark.parametrize("backbone", ["gin", "gat", "transformer"])
def test_graphmae_and_data2vec_train_on_every_graph_backbone(graphs, backbone):
    torch.manual_seed(0)
    kw = dict(backbone=backbone, hidden_size=16, num_layers=2, heads=2, structural_encoding=4 * (backbone == "transformer"),
              node_encoder="linear")
    data = builtin_graphs(16, seed=1, structural_encoding=4 if backbone == "transformer" else 0)
    batches = [collate_graphs([{"graph": data[i], "seed": i} for i in range(j, j + 8)]) for j in (0, 8)]
    for method in ("graphmae", "data2vec"):
        run = GraphRun(method=method, **kw)
        train_steps(build_objective(run, data.num_features, 10), batches)


def test_graphcl_is_nt_xent_over_a_graph_and_its_augmented_view(graphs):
    torch.manual_seed(0)
    run = GraphRun(method="graphcl", hidden_size=16, num_layers=2, readout="sum", readout_layers="all",
                   temperature=0.2, norm="batchnorm", activation="relu")
    objective = build_objective(run, graphs.num_features, 10)
    assert type(objective) is SimCLR and objective.config.temperature == 0.2
    views = GraphViewDataset(list(graphs.graphs), [Identity(), graphcl_augmentation("random4", 0.1, 0.2)], seed=0)
    batch = collate_graph_views([views[i] for i in range(12)])
    out = objective(batch)
    z1, z2 = objective.project(batch_views(batch))
    torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.2, False), rtol=1e-5, atol=1e-6)
    first = objective.encoder().pooled(batch_views(batch)[0])
    assert first.shape == (12, 2 * 16), "sum readout over every layer, concatenated (GraphCL's)"
    train_steps(objective, [batch])


def batch_views(batch):
    from selfsup.objectives.two_view.common import get_views

    return get_views(batch)


def test_graph_settings_reject_what_they_cannot_train():
    from selfsup.errors import SelfsupError

    with pytest.raises(SelfsupError, match="--method"):
        GraphRun(method="bert_mlm")
    with pytest.raises(SelfsupError, match="--task node"):
        GraphRun(method="graphcl", task="node")
    assert dataclasses.replace(GraphRun(), backbone="gat").backbone == "gat"
