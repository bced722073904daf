"""GraphMAE written directly on ``torch_geometric``, no engine: the reference the graph benchmarks compare against.

A line-for-line port of THUDM/GraphMAE's graph-classification path (``models/edcoder.py`` ``PreModel`` with
``models/gin.py``'s GIN, ``main_graph.py``'s training loop) from DGL to PyG: the GIN layer is dropout ->
``GINConv`` (eps 0, MLP Linear -> norm -> act -> Linear) -> norm -> act; the encoder's last layer keeps norm and
act, the one-layer decoder has neither; masking draws one permutation over all the nodes of the batch
(``encoding_mask_noise``), a replace rate of the masked nodes takes random nodes' features, the encoder's output
is re-masked (zeroed) before the decoder, and the loss is the scaled cosine error at the masked nodes. Adam, no
scheduler, ``torch_geometric.loader.DataLoader`` with shuffling and the last batch kept.

    python benchmarks/graphmae_reference.py --dataset MUTAG --seeds 0 1 2 3 4     # GraphMAE's MUTAG config

prints the SVM protocol's accuracy per seed (``selfsup.protocols.svm_cross_validation``, GraphMAE's own) and, as
its last line, a JSON summary. ``benchmarks/graph_speed.py`` times its training step against ours.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINConv, global_add_pool, global_max_pool, global_mean_pool

CONFIGS = {  # GraphMAE's configs.yml
    "MUTAG": dict(num_hidden=32, num_layers=5, lr=5e-4, weight_decay=0.0, mask_rate=0.75, replace_rate=0.1,
                  alpha_l=2.0, max_epoch=20, pooling="sum", batch_size=64, in_drop=0.2),
    "PROTEINS": dict(num_hidden=512, num_layers=3, lr=1.5e-4, weight_decay=0.0, mask_rate=0.5, replace_rate=0.0,
                     alpha_l=1.0, max_epoch=100, pooling="max", batch_size=32, in_drop=0.2),
}
POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """GraphMAE's two-layer ``MLP``: Linear -> BatchNorm -> PReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(), nn.Linear(hidden, out_dim))


class GIN(nn.Module):
    """GraphMAE's GIN; ``encoding``: the last layer keeps norm + act (an encoder), else none (the decoder)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float, encoding: bool):
        super().__init__()
        self.dropout, self.convs, self.after = dropout, nn.ModuleList(), nn.ModuleList()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            self.convs.append(GINConv(mlp(dims[i], hidden, dims[i + 1]), eps=0.0))
            last = i == num_layers - 1
            self.after.append(nn.Identity() if last and not encoding
                              else nn.Sequential(nn.BatchNorm1d(dims[i + 1]), nn.PReLU()))

    def forward(self, x, edge_index):
        for conv, after in zip(self.convs, self.after):
            x = after(conv(F.dropout(x, self.dropout, self.training), edge_index))
        return x


class GraphMAE(nn.Module):
    """``PreModel`` for graph classification (GIN encoder and decoder, SCE loss, re-mask)."""

    def __init__(self, in_dim: int, c: dict[str, Any]) -> None:
        super().__init__()
        self.c = c
        self.encoder = GIN(in_dim, c["num_hidden"], c["num_hidden"], c["num_layers"], c["in_drop"], True)
        self.decoder = GIN(c["num_hidden"], c["num_hidden"], in_dim, 1, c["in_drop"], False)
        self.enc_mask_token = nn.Parameter(torch.zeros(1, in_dim))
        self.encoder_to_decoder = nn.Linear(c["num_hidden"], c["num_hidden"], bias=False)

    def mask_noise(self, x):
        n, c = x.shape[0], self.c
        perm = torch.randperm(n, device=x.device)
        num_mask = int(c["mask_rate"] * n)
        mask_nodes = perm[:num_mask]
        out = x.clone()
        if c["replace_rate"] > 0:
            num_noise = int(c["replace_rate"] * num_mask)
            perm_mask = torch.randperm(num_mask, device=x.device)
            token_nodes = mask_nodes[perm_mask[: int((1 - c["replace_rate"]) * num_mask)]]
            noise_nodes = mask_nodes[perm_mask[-int(c["replace_rate"] * num_mask):]]
            chosen = torch.randperm(n, device=x.device)[:num_noise]
            out[token_nodes] = 0.0
            out[noise_nodes] = x[chosen]
        else:
            token_nodes = mask_nodes
            out[mask_nodes] = 0.0
        out[token_nodes] += self.enc_mask_token
        return out, mask_nodes

    def forward(self, x, edge_index):
        use_x, mask_nodes = self.mask_noise(x)
        rep = self.encoder_to_decoder(self.encoder(use_x, edge_index))
        rep[mask_nodes] = 0
        recon = self.decoder(rep, edge_index)
        a, b = F.normalize(recon[mask_nodes], dim=-1), F.normalize(x[mask_nodes], dim=-1)
        return (1 - (a * b).sum(dim=-1)).pow_(self.c["alpha_l"]).mean()


def reference_name(key: str) -> str:
    """selfsup's GIN parameter names -> this module's: layers.i.conv -> convs.i, layers.i.norm / act ->
    after.i.0 / after.i.1 (the other names are equal)."""
    parts = key.split(".")
    if parts[0] != "layers":
        return key
    head = {"conv": ["convs", parts[1]], "norm": ["after", parts[1], "0"], "act": ["after", parts[1], "1"]}
    return ".".join(head[parts[2]] + parts[3:])


def copy_weights(ours, ref: "GraphMAE") -> "GraphMAE":
    """Give ``ref`` the weights of selfsup's GraphMAE objective ``ours`` (MAE class on GIN encoder and decoder),
    parameter for parameter; strict, so every name and shape must match."""
    for mine, theirs in ((ours.backbone, ref.encoder), (ours.decoder, ref.decoder),
                         (ours.decoder_embed, ref.encoder_to_decoder)):
        theirs.load_state_dict({reference_name(k): v for k, v in mine.state_dict().items()})
    with torch.no_grad():
        ref.enc_mask_token.copy_(ours.encoder_mask_token[None])
    return ref


def formula_loss(ref: "GraphMAE", x, edge_index, mask_nodes, alpha: float):
    """Hou et al. 2022, eqs. 1-4, with a given mask (no random replacement): x~ = x with [MASK] at the masked
    nodes; H = f_E(A, x~); H~ = W H, re-masked; Z = f_D(A, H~); the mean over the masked nodes of
    (1 - cos(x_i, z_i)) ** alpha."""
    x_masked = x.clone()
    x_masked[mask_nodes] = ref.enc_mask_token
    h = ref.encoder_to_decoder(ref.encoder(x_masked, edge_index))
    h[mask_nodes] = 0
    z = ref.decoder(h, edge_index)
    return (1 - F.cosine_similarity(z[mask_nodes], x[mask_nodes], dim=-1)).pow(alpha).mean()


def lowest_noise_nodes(noise, counts, ratio: float):
    """The packed indices of the nodes selfsup's masking picks for a given (B, N) noise: per graph of n nodes
    the int(ratio * n) of lowest noise."""
    chosen, offset = [], 0
    for i, n in enumerate(counts):
        chosen.append(offset + noise[i, :n].argsort()[: int(ratio * n)])
        offset += n
    return torch.cat(chosen)


def load(dataset: str, root: str):
    """The TU graphs as GraphMAE prepares them (one-hot node labels, self-loops removed and re-added), as PyG
    ``Data``, through selfsup's loader (the same graphs both sides see)."""
    from selfsup.modalities.graph import load_tu

    return load_tu(root, dataset, self_loops=True)


def run(dataset: str, seed: int, root: str, epochs: int | None = None) -> float:
    from torch_geometric.loader import DataLoader

    from selfsup.protocols import svm_cross_validation

    c = dict(CONFIGS[dataset])
    graphs = load(dataset, root)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = GraphMAE(graphs.num_features, c)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    train = DataLoader(graphs.graphs, batch_size=c["batch_size"], shuffle=True)
    for _ in range(epochs or c["max_epoch"]):
        model.train()
        for batch in train:
            loss = model(batch.x, batch.edge_index)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    embeddings = []
    with torch.no_grad():
        for batch in DataLoader(graphs.graphs, batch_size=c["batch_size"]):
            embeddings.append(POOLS[c["pooling"]](model.encoder(batch.x, batch.edge_index), batch.batch))
    return svm_cross_validation(torch.cat(embeddings).numpy(), np.asarray(graphs.labels))[0]


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="MUTAG", choices=sorted(CONFIGS))
    p.add_argument("--root", default="../shared/data/graphs/TUDataset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    scores = []
    for seed in args.seeds:
        scores.append(run(args.dataset, seed, args.root, args.epochs))
        print(f"seed {seed}: {scores[-1]:.4f}")
    out = {"name": f"graphmae_reference_{args.dataset.lower()}", "mean": float(np.mean(scores)),
           "std": float(np.std(scores)), "seeds": args.seeds, "scores": scores}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
