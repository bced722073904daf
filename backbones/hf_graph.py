"""Export of a graph encoder (``GraphAdapter`` + ``GNNBackbone`` or the shared ``TransformerEncoder``) as selfsup's
own ``transformers`` model, and of a GIN as plain ``torch_geometric.nn`` modules.

* **transformers**: ``SelfsupGraphModel`` / ``SelfsupGraphConfig`` (``model_type="selfsup_graph"``), whose code
  is the real module :mod:`selfsup.backbones.remote.modeling_selfsup_graph` (torch, transformers and
  torch_geometric only), copied file for file beside the weights as ``modeling_selfsup_graph.py`` and named in
  the config's ``auto_map``: ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` loads it where selfsup
  is not installed. Inputs PyG-style (``node_features``, ``edge_index``, ``batch`` or ``num_nodes``); outputs
  the node states (T, D) and the pooled graph embedding (the encoder's pooling: mean / sum / max, over the last
  or all layers). Weight names: ours ``adapter.*`` -> ``embeddings.*``, ``backbone.layers.*`` -> ``layers.*``
  (edge-label embeddings, which the GIN and GAT do not read, are left out).
* **plain PyG** (a GIN without residuals, node labels or structural encoding): ``pyg_gin.safetensors``, a
  ``load_state_dict``-ready state of ``nn.ModuleDict({"convs": GINConv..., "norms": ..., "acts": ...})`` (plus
  ``feature_proj`` for a linear node encoder), and in the model card the lines that build those modules from
  ``torch`` and ``torch_geometric`` and run them (:func:`plain_pyg_snippet`).

:func:`export_graph` writes both and checks the first: reloaded with ``AutoModel``, node states and pooled
embeddings equal ours to 1e-4 (:func:`check_graph_export`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from selfsup.backbones.gnn import GNNBackbone
from selfsup.backbones.remote import modeling_selfsup_graph as remote
from selfsup.backbones.transformer import TransformerEncoder
from selfsup.convert import check_close, fill_model, max_abs_diff
from selfsup.errors import SelfsupError
from selfsup.export import write_model_card
from selfsup.graphs import graph_index, pack
from selfsup.modalities.graph.adapter import GraphAdapter
from selfsup.types import Encoder

MODEL_TYPE = "selfsup_graph"
MODELING_FILE = "modeling_selfsup_graph.py"
PLAIN_FILE = "pyg_gin.safetensors"
AUTO_MAP = {"AutoConfig": "modeling_selfsup_graph.SelfsupGraphConfig",
            "AutoModel": "modeling_selfsup_graph.SelfsupGraphModel"}
PLAIN_HEADING = "## Plain torch_geometric"


def graph_config(encoder: Encoder) -> remote.SelfsupGraphConfig:
    """The ``SelfsupGraphConfig`` of a graph :class:`Encoder` (a one-line error for what it cannot hold)."""
    adapter, backbone = encoder.adapter, encoder.backbone
    if not isinstance(adapter, GraphAdapter) or not isinstance(backbone, (GNNBackbone, TransformerEncoder)):
        raise SelfsupError("only a GraphAdapter + GNNBackbone / TransformerEncoder encoder exports as a selfsup graph "
                           "model")
    if encoder.pooling not in remote.READOUTS:
        raise SelfsupError(f"a graph export pools by mean, sum or max, not {encoder.pooling!r}")
    a = adapter.config
    common = dict(num_features=a.num_features, node_encoder=a.node_encoder, embedding_size=adapter.hidden_size,
                  node_label_sizes=list(a.node_label_sizes), pe_size=a.pe_size,
                  use_node_token=adapter.node_token is not None, readout=encoder.pooling,
                  readout_layers=encoder.layers, auto_map=dict(AUTO_MAP))
    g = backbone.config
    if isinstance(backbone, TransformerEncoder):
        if g.causal:
            raise SelfsupError("a causal Transformer does not export as a graph encoder")
        return remote.SelfsupGraphConfig(
            gnn_type="transformer", gnn_hidden_size=g.hidden_size, num_layers=g.num_layers, num_heads=g.num_heads,
            intermediate_size=g.intermediate_size, hidden_act=g.activation, norm_first=g.norm_first,
            final_norm=g.final_norm, layer_norm_eps=g.layer_norm_eps, bias=g.bias, **common)
    return remote.SelfsupGraphConfig(
        gnn_type=g.kind, gnn_hidden_size=g.hidden_size, num_layers=g.num_layers, output_size=g.output_size,
        encoding=g.encoding, norm=g.norm, activation=g.activation, residual=g.residual, num_heads=g.heads,
        output_heads=g.output_heads, negative_slope=g.negative_slope, **common)


def to_hf_state_dict(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Our encoder's state under the export's names (module docstring)."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("adapter.edge_embeddings."):
            continue
        if key.startswith("adapter."):
            out["embeddings." + key[len("adapter."):]] = value
        elif key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        else:
            raise RuntimeError(f"graph export: no name for {key}")
    return out


def encoder_to_hf(encoder: Encoder) -> remote.SelfsupGraphModel:
    """A ``SelfsupGraphModel`` holding our encoder's weights (eval mode)."""
    model = remote.SelfsupGraphModel(graph_config(encoder))
    return fill_model(model, to_hf_state_dict(encoder), "graph")


def hf_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The export's PyG-style inputs for one of our batches."""
    out = {"node_features": batch["node_features"].float(), "edge_index": batch["edge_index"],
           "batch": graph_index(batch["num_nodes"])}
    for key in ("node_labels", "node_pe"):
        if key in batch:
            out[key] = batch[key]
    return out


@torch.no_grad()
def check_graph_export(encoder: Encoder, out_dir: str | Path, batch: Mapping[str, Any],
                       atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` with ``AutoModel`` (``trust_remote_code``: its code is the file this export copied) and
    compare node states and pooled embeddings with ours (eval mode)."""
    from transformers import AutoModel

    encoder = encoder.float().cpu().eval()
    theirs = AutoModel.from_pretrained(str(out_dir), trust_remote_code=True).eval()(**hf_inputs(batch))
    out, padding_mask = encoder(batch)
    nodes = pack(out.last_hidden_state, padding_mask)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(nodes, theirs.last_hidden_state),
                                                      "graph node states", atol),
            "export/max_abs_pooled_diff": check_close(max_abs_diff(encoder.pooled(batch), theirs.pooler_output),
                                                      "graph embeddings", atol)}


def plain_pyg_state(encoder: Encoder) -> dict[str, torch.Tensor] | None:
    """The GIN's weights under the plain modules' names, or None when the encoder is not a plain GIN."""
    a, g = encoder.adapter.config, encoder.backbone.config
    if not isinstance(encoder.backbone, GNNBackbone) or g.kind != "gin" or g.residual or a.node_label_sizes or a.pe_size or a.num_features == 0:
        return None
    out = {k: v for k, v in encoder.adapter.state_dict().items() if k.startswith("feature_proj.")}
    for i, layer in enumerate(encoder.backbone.layers):
        for part, module in (("convs", layer.conv), ("norms", layer.norm), ("acts", layer.act)):
            out.update({f"{part}.{i}.{k}": v for k, v in module.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


NORM_CODE = {"batchnorm": "nn.BatchNorm1d({})", "layernorm": "nn.LayerNorm({})", "none": "nn.Identity()"}
ACT_CODE = {"prelu": "nn.PReLU()", "relu": "nn.ReLU()", "elu": "nn.ELU()", "gelu": "nn.GELU()", "none": "nn.Identity()"}
POOL_CODE = {"mean": "global_mean_pool", "sum": "global_add_pool", "max": "global_max_pool"}


def plain_pyg_snippet(encoder: Encoder) -> str:
    """The lines that build the plain GIN of :func:`plain_pyg_state` from torch and torch_geometric, load it and
    embed a PyG batch ``x``, ``edge_index``, ``batch`` (as the model card shows them)."""
    a, g = encoder.adapter.config, encoder.backbone.config
    widths = [o for _, o in g.widths()]
    norms = [NORM_CODE[g.norm].format(o) if not isinstance(layer.norm, torch.nn.Identity) else "nn.Identity()"
             for o, layer in zip(widths, encoder.backbone.layers)]
    acts = [ACT_CODE[g.activation] if not isinstance(layer.act, torch.nn.Identity) else "nn.Identity()"
            for layer in encoder.backbone.layers]
    pool = POOL_CODE[encoder.pooling]
    linear = encoder.adapter.feature_proj is not None
    lines = [
        "import torch",
        "from safetensors.torch import load_file",
        "from torch import nn",
        f"from torch_geometric.nn import GINConv, {pool}",
        "",
        f"sizes = {[g.input_size] + widths}   # the GIN's input and layer widths",
        "def mlp(i, o):",
        f"    return nn.Sequential(nn.Linear(i, {g.hidden_size}), {NORM_CODE[g.norm].format(g.hidden_size)}, "
        f"{ACT_CODE[g.activation]}, nn.Linear({g.hidden_size}, o))",
        "model = nn.ModuleDict({",
        *([f'    "feature_proj": nn.Linear({a.num_features}, {g.input_size}),'] if linear else []),
        f'    "convs": nn.ModuleList(GINConv(mlp(sizes[k], sizes[k + 1])) for k in range({g.num_layers})),',
        f'    "norms": nn.ModuleList([{", ".join(norms)}]),',
        f'    "acts": nn.ModuleList([{", ".join(acts)}]),',
        "})",
        f'model.load_state_dict(load_file("{PLAIN_FILE}"))',
        "model.eval()",
        "# x (T, F) node features, edge_index (2, E), batch (T,): a PyG batch, self-loops as in the training data",
        "with torch.no_grad():",
        '    h = model["feature_proj"](x)' if linear else "    h = x",
        "    states = []",
        '    for conv, norm, act in zip(model["convs"], model["norms"], model["acts"]):',
        "        h = act(norm(conv(h, edge_index)))",
        "        states.append(h)",
        f"    graph_embedding = {pool}(h, batch)" if encoder.layers == "last"
        else f"    graph_embedding = torch.cat([{pool}(s, batch) for s in states], dim=-1)",
    ]
    return "\n".join(lines)


def kind(backbone) -> str:
    """GIN, GAT or Transformer."""
    return "Transformer" if isinstance(backbone, TransformerEncoder) else backbone.config.kind.upper()


USAGE = """from transformers import AutoModel

model = AutoModel.from_pretrained("{path}", trust_remote_code=True).eval()
# x (T, F) node features, edge_index (2, E), batch (T,): a PyG batch, self-loops as in the training data
out = model(node_features=x, edge_index=edge_index, batch=batch)
out.last_hidden_state   # (T, {width}) node states
out.pooler_output       # (B, {pooled}) graph embeddings ({pooling} readout)"""


def export_graph(encoder: Encoder, out_dir: str | Path, batch: Mapping[str, Any], metrics: dict | None = None,
                 run: dict | None = None, atol: float = 1e-4) -> dict[str, float]:
    """Write the export (module docstring): ``config.json``, ``model.safetensors``, ``modeling_selfsup_graph.py``,
    for a plain GIN ``pyg_gin.safetensors``, and ``README.md``; reload and compare on ``batch``; returns the
    check's figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.float().cpu().eval()
    model = encoder_to_hf(encoder)
    model.save_pretrained(str(out))
    shutil.copyfile(remote.__file__, out / MODELING_FILE)
    plain = plain_pyg_state(encoder)
    if plain is not None:
        save_file(plain, str(out / PLAIN_FILE))
    figures = check_graph_export(encoder, out, batch, atol)
    pooled = encoder.pooled(batch).shape[-1]
    card = write_model_card(
        out, title="selfsup graph encoder", pipeline_tag="feature-extraction",
        summary=f"A {kind(encoder.backbone)} graph encoder ({encoder.backbone.config.num_layers} "
                f"layers, width {encoder.backbone.hidden_size}) with its node embedding, as selfsup's own "
                "transformers model; its code is modeling_selfsup_graph.py beside the weights.",
        metrics={**(metrics or {}), **figures}, run=run or {},
        usage=USAGE.format(path=out, width=encoder.backbone.hidden_size, pooled=pooled, pooling=encoder.pooling),
        tags=("graph", "gnn"))
    if plain is not None:
        with open(card, "a", encoding="utf-8") as handle:
            handle.write(f"\n{PLAIN_HEADING}\n\nThe same GIN as plain `torch_geometric.nn` modules, from "
                         f"`{PLAIN_FILE}` in this folder (run from here):\n\n```python\n"
                         f"{plain_pyg_snippet(encoder)}\n```\n")
    return figures


__all__ = ["export_graph", "check_graph_export", "graph_config", "to_hf_state_dict", "encoder_to_hf", "hf_inputs",
           "plain_pyg_state", "plain_pyg_snippet", "MODEL_TYPE", "MODELING_FILE", "PLAIN_FILE", "AUTO_MAP",
           "PLAIN_HEADING"]
