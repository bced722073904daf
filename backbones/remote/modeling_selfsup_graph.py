"""selfsup's graph encoder for ``transformers``: node embedding + GIN or GAT (GraphMAE's layers), or selfsup's
Transformer over each graph's nodes (attention within a graph, a structural encoding as positions) + a readout.

This file is shipped, as it is, beside the weights of every exported selfsup graph encoder, and imports only
``torch``, ``transformers`` and ``torch_geometric``::

    from transformers import AutoModel
    model = AutoModel.from_pretrained(DIR, trust_remote_code=True).eval()
    out = model(node_features=x, edge_index=edge_index, batch=batch)   # PyG-style inputs
    out.last_hidden_state   # (T, D) node states
    out.pooler_output       # (B, D') graph embeddings (the configured readout: mean / sum / max)

Inputs: ``node_features`` (T, F) float, ``edge_index`` (2, E) long, and ``batch`` (T,) (the graph of every node)
or ``num_nodes`` (B,) (nodes per graph, in order; neither: one graph); ``node_labels`` (T,) / (T, k) and
``node_pe`` (T, K) when the encoder embeds them. The graph is used as given (add self-loops if the training data
had them). Weight names: ``embeddings.*`` (the node embedding), ``layers.{i}.*`` (``conv`` a ``GINConv`` /
``GATConv``, ``norm``, ``act``, ``res``; for the Transformer ``attn.qkv`` / ``attn.out``, ``norm1``, ``fc1``,
``fc2``, ``norm2``) and the Transformer's final ``norm``. The Transformer's ``hidden_states`` are the input and
every layer's output before the final norm, as in ``transformers``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GINConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.utils import to_dense_batch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling

ACTIVATIONS = {"prelu": nn.PReLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "none": nn.Identity}
READOUTS = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}


class SelfsupGraphConfig(PretrainedConfig):
    model_type = "selfsup_graph"

    def __init__(self, num_features=0, node_encoder="linear", embedding_size=32, node_label_sizes=(), pe_size=0,
                 use_node_token=False, gnn_type="gin", gnn_hidden_size=32, num_layers=2, output_size=None,
                 encoding=True, norm="batchnorm", activation="prelu", residual=False, num_heads=1, output_heads=None,
                 negative_slope=0.2, readout="mean", readout_layers="last", intermediate_size=None, hidden_act="gelu",
                 norm_first=True, final_norm=True, layer_norm_eps=1e-12, bias=True, **kwargs):
        self.num_features, self.node_encoder, self.embedding_size = num_features, node_encoder, embedding_size
        self.node_label_sizes, self.pe_size = list(node_label_sizes), pe_size
        self.use_node_token, self.gnn_type, self.gnn_hidden_size = use_node_token, gnn_type, gnn_hidden_size
        self.num_layers, self.output_size, self.encoding = num_layers, output_size, encoding
        self.norm, self.activation, self.residual = norm, activation, residual
        self.num_heads, self.output_heads, self.negative_slope = num_heads, output_heads, negative_slope
        self.readout, self.readout_layers = readout, readout_layers
        # the Transformer's (gnn_type="transformer"; width gnn_hidden_size, num_heads heads)
        self.intermediate_size, self.hidden_act = intermediate_size or 4 * gnn_hidden_size, hidden_act
        self.norm_first, self.final_norm, self.layer_norm_eps, self.bias = norm_first, final_norm, layer_norm_eps, bias
        self.hidden_size = gnn_hidden_size if output_size is None else output_size
        super().__init__(**kwargs)


def make_norm(name, width):
    if name == "batchnorm":
        return nn.BatchNorm1d(width)
    return nn.LayerNorm(width) if name == "layernorm" else nn.Identity()


def residual_map(in_size, out_size):
    return nn.Identity() if in_size == out_size else nn.Linear(in_size, out_size, bias=False)


class NodeEmbeddings(nn.Module):
    """Node features through a linear map (or unchanged), plus label embeddings, a node token, and the projected
    structural encoding."""

    def __init__(self, c):
        super().__init__()
        d = c.embedding_size
        linear = c.node_encoder == "linear" and c.num_features > 0
        self.feature_proj = nn.Linear(c.num_features, d) if linear else None
        self.label_embeddings = nn.ModuleList(nn.Embedding(n, d) for n in c.node_label_sizes)
        self.node_token = nn.Parameter(torch.zeros(1, d)) if c.use_node_token else None
        self.pe_proj = nn.Linear(c.pe_size, d) if c.pe_size else None
        self.pass_through = c.node_encoder == "none"

    def forward(self, node_features, node_labels=None, node_pe=None):
        total = node_features.shape[0]
        parts = []
        if self.feature_proj is not None:
            parts.append(self.feature_proj(node_features))
        elif self.pass_through:
            parts.append(node_features.float())
        if len(self.label_embeddings):
            labels = node_labels.reshape(total, -1)
            parts += [table(labels[:, k]) for k, table in enumerate(self.label_embeddings)]
        if self.node_token is not None:
            parts.append(self.node_token.expand(total, -1))
        if self.pe_proj is not None:
            parts.append(self.pe_proj(node_pe))
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out


class GINLayer(nn.Module):
    """dropout -> GINConv(MLP(Linear, norm, act, Linear)) -> norm -> act (+ residual)."""

    def __init__(self, c, in_size, out_size, last):
        super().__init__()
        h = c.gnn_hidden_size
        mlp = nn.Sequential(nn.Linear(in_size, h), make_norm(c.norm, h), ACTIVATIONS[c.activation](),
                            nn.Linear(h, out_size))
        self.conv = GINConv(mlp, eps=0.0, train_eps=False)
        after = not last or (c.encoding and c.norm != "none")
        self.norm = make_norm(c.norm, out_size) if after else nn.Identity()
        self.act = ACTIVATIONS[c.activation]() if after else nn.Identity()
        self.res = residual_map(in_size, out_size) if c.residual and (not last or c.encoding) else None

    def forward(self, x, edge_index):
        out = self.act(self.norm(self.conv(x, edge_index)))
        return out if self.res is None else out + self.res(x)


class GATLayer(nn.Module):
    """GATConv (heads concatenated, bias) -> + residual -> norm -> act."""

    def __init__(self, c, in_size, out_size, last):
        super().__init__()
        heads = (c.output_heads or c.num_heads) if last else c.num_heads
        plain = last and not c.encoding
        self.conv = GATConv(in_size, out_size // heads, heads=heads, concat=True, negative_slope=c.negative_slope,
                            add_self_loops=False, bias=True)
        self.res = residual_map(in_size, out_size) if c.residual and not plain else None
        self.norm = nn.Identity() if plain else make_norm(c.norm, out_size)
        no_act = last and (plain or c.num_layers == 1)
        self.act = nn.Identity() if no_act else ACTIVATIONS[c.activation]()

    def forward(self, x, edge_index):
        out = self.conv(x, edge_index)
        if self.res is not None:
            out = out + self.res(x)
        return self.act(self.norm(out))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection; ``mask`` (B, 1, 1, N) True where a key is real."""

    def __init__(self, c):
        super().__init__()
        self.num_heads = c.num_heads
        self.qkv = nn.Linear(c.gnn_hidden_size, 3 * c.gnn_hidden_size, bias=c.bias)
        self.out = nn.Linear(c.gnn_hidden_size, c.gnn_hidden_size, bias=c.bias)

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Self-attention and an MLP, each with a residual; LayerNorm before them (pre-LN) or after (post-LN)."""

    def __init__(self, c):
        super().__init__()
        d = c.gnn_hidden_size
        self.norm_first = c.norm_first
        self.attn = SelfAttention(c)
        self.norm1 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(d, c.intermediate_size, bias=c.bias)
        self.fc2 = nn.Linear(c.intermediate_size, d, bias=c.bias)
        self.norm2 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.act = ACT2FN[c.hidden_act]

    def forward(self, x, mask):
        mlp = lambda h: self.fc2(self.act(self.fc1(h)))  # noqa: E731
        if self.norm_first:
            x = x + self.attn(self.norm1(x), mask)
            return x + mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + mlp(x))


class SelfsupGraphPreTrainedModel(PreTrainedModel):
    config_class = SelfsupGraphConfig
    base_model_prefix = "graph"
    main_input_name = "node_features"

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class SelfsupGraphModel(SelfsupGraphPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        c = config
        self.embeddings = NodeEmbeddings(c)
        if c.gnn_type == "transformer":
            self.layers = nn.ModuleList(TransformerLayer(c) for _ in range(c.num_layers))
            self.norm = nn.LayerNorm(c.gnn_hidden_size, eps=c.layer_norm_eps) if c.final_norm else nn.Identity()
        else:
            out_size = c.gnn_hidden_size if c.output_size is None else c.output_size
            sizes = [c.embedding_size] + [c.gnn_hidden_size] * (c.num_layers - 1) + [out_size]
            layer = GINLayer if c.gnn_type == "gin" else GATLayer
            self.layers = nn.ModuleList(layer(c, sizes[k], sizes[k + 1], k == c.num_layers - 1)
                                        for k in range(c.num_layers))
        self.post_init()

    def transformer(self, h, batch, size):
        """Every graph's nodes padded to (B, N, D), attention within each graph: (last state (T, D) after the
        final norm, [input, every layer's output] (T, D) each)."""
        x, real = to_dense_batch(h, batch, batch_size=size)
        mask = real[:, None, None, :]
        states = [h]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x[real])
        return self.norm(x)[real], states

    def forward(self, node_features, edge_index, batch=None, num_nodes=None, node_labels=None, node_pe=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if batch is None:
            counts = num_nodes if num_nodes is not None else torch.tensor([node_features.shape[0]])
            batch = torch.repeat_interleave(torch.arange(len(counts), device=node_features.device),
                                            counts.to(node_features.device))
        h = self.embeddings(node_features, node_labels, node_pe)
        size = int(batch.max()) + 1 if batch.numel() else 0
        if self.config.gnn_type == "transformer":
            h, states = self.transformer(h, batch, size)
        else:
            states = [h]
            for layer in self.layers:
                h = layer(h, edge_index)
                states.append(h)
        readout = READOUTS[self.config.readout]
        chosen = states[1:] if self.config.readout_layers == "all" else [h]
        pooled = torch.cat([readout(s, batch, size) for s in chosen], dim=-1)
        hidden = tuple(states) if output_hidden_states else None
        if return_dict is False:
            return (h, pooled) + ((hidden,) if hidden is not None else ())
        return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=pooled, hidden_states=hidden)
