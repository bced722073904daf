"""selfsup's table encoder for ``transformers``: a feature tokenizer (one token per column) + a Transformer over the
column tokens with a [CLS] token (FT-Transformer style), and the processor that turns rows into its inputs with the
schema and scalers fitted on the training split.

This file is shipped, as it is, beside the weights of every exported selfsup table encoder, and imports only
``numpy``, ``torch`` and ``transformers``::

    from transformers import AutoFeatureExtractor, AutoModel
    processor = AutoFeatureExtractor.from_pretrained(DIR, trust_remote_code=True)
    model = AutoModel.from_pretrained(DIR, trust_remote_code=True).eval()
    inputs = processor(rows)            # a pandas DataFrame, a list of dicts, or a dict of columns
    out = model(**inputs)
    out.pooler_output                   # (B, D) row embeddings (the [CLS] token's output, or the token mean)
    out.last_hidden_state               # (B, 1 + N, D) the [CLS] token and one token per column

The processor reads each feature column by name (extra columns, the label among them, are ignored): numbers are
scaled as in training (``quantile``: the training quantiles mapped to a standard normal; ``standard``; ``none``), a
missing cell (empty, ``?``, ``NA``, ``NaN``, ``None``, ...) becomes the column's missing-value token, a category
never seen in training the unseen token; text in a numeric column and an infinite number are errors naming the
row and column. Weight names: ``embeddings.*`` (``numeric_weight``, ``numeric_missing``, ``category_embeddings``,
``column_embeddings``, ``cls_token``), ``layers.{i}.*`` (``attn.qkv`` / ``attn.out``, ``norm1``, ``fc1``, ``fc2``,
``norm2``) and the final ``norm``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchFeature, FeatureExtractionMixin, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling

MISSING, UNSEEN, RESERVED = 0, 1, 2
MISSING_MARKERS = frozenset({"", "?", "NA", "N/A", "NaN", "nan", "null", "None"})
QUANTILE_CLIP = 1e-7


class SelfsupTabularConfig(PretrainedConfig):
    model_type = "selfsup_tabular"

    def __init__(self, num_numeric=0, vocab_sizes=(), cls_token=True, hidden_size=64, num_layers=2, num_heads=2,
                 intermediate_size=128, hidden_act="gelu", norm_first=True, final_norm=True, layer_norm_eps=1e-12,
                 bias=True, pooling="first", schema=None, backbone="transformer", token_size=None,
                 activation="relu", **kwargs):
        self.num_numeric, self.vocab_sizes, self.cls_token = num_numeric, list(vocab_sizes), cls_token
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.hidden_act = intermediate_size, hidden_act
        self.norm_first, self.final_norm, self.layer_norm_eps, self.bias = norm_first, final_norm, layer_norm_eps, bias
        self.pooling, self.schema = pooling, schema or {}
        # backbone "mlp": the column tokens (token_size wide, no [CLS]) flattened into num_layers linear layers of
        # hidden_size, the activation between them; one output token per row
        self.backbone, self.token_size, self.activation = backbone, token_size or hidden_size, activation
        super().__init__(**kwargs)


# -- the processor ---------------------------------------------------------------------------------------------------
def is_missing(value):
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (str, bytes)):
        return (value.decode() if isinstance(value, bytes) else value).strip() in MISSING_MARKERS
    return False


def as_number(value):
    if is_missing(value):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def as_category(value):
    if is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def quantile_normal(x, quantiles):
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0, 1, len(q))
    if len(q) < 2:
        return np.where(np.isnan(x), np.nan, 0.0)
    u = 0.5 * (np.interp(x, q, levels) - np.interp(-x, -q[::-1], -levels[::-1]))
    u = np.where(x - QUANTILE_CLIP < q[0], 0.0, np.where(x + QUANTILE_CLIP > q[-1], 1.0, u))
    u = np.clip(u, QUANTILE_CLIP, 1 - QUANTILE_CLIP)
    z = torch.special.ndtri(torch.from_numpy(u)).numpy()
    return np.where(np.isnan(x), np.nan, z)


def scale(column, values):
    if column["scaling"] == "standard":
        return (values - column["mean"]) / column["std"]
    if column["scaling"] == "quantile":
        return quantile_normal(values, column["quantiles"])
    return values


def columns_of(rows):
    """A pandas DataFrame, a list of row dicts or a dict of columns -> (dict name -> list of cells, row count)."""
    if hasattr(rows, "columns") and hasattr(rows, "to_dict"):
        return {str(c): rows[c].tolist() for c in rows.columns}, len(rows)
    if isinstance(rows, dict):
        cols = {str(k): list(v) for k, v in rows.items()}
        return cols, len(next(iter(cols.values()))) if cols else 0
    rows = list(rows)
    names = {str(k) for r in rows for k in r}
    return {n: [r.get(n) for r in rows] for n in names}, len(rows)


class SelfsupTabularFeatureExtractor(FeatureExtractionMixin):
    """Rows -> ``numeric`` (B, Fn) float32 (scaled; NaN = missing) and ``categorical`` (B, Fc) int64 codes, with
    the schema the encoder was trained with (module docstring)."""

    model_input_names = ["numeric", "categorical"]

    def __init__(self, schema=None, **kwargs):
        super().__init__(**kwargs)
        self.schema = schema or {"columns": []}

    def __call__(self, rows, return_tensors="pt"):
        cells, n = columns_of(rows)
        columns = self.schema["columns"]
        absent = [c["name"] for c in columns if c["name"] not in cells]
        if absent:
            raise ValueError(f"the rows have no column(s) {absent}; the encoder reads {[c['name'] for c in columns]}")
        numeric, categorical = [], []
        for c in columns:
            if c["kind"] == "numeric":
                values = np.empty(n, dtype=np.float64)
                for i, v in enumerate(cells[c["name"]]):
                    x = as_number(v)
                    if x is None or math.isinf(x):
                        raise ValueError(f"row {i}, column {c['name']}: {v!r} is not a finite number (the column is "
                                         f"numeric)")
                    values[i] = x
                numeric.append(scale(c, values))
            else:
                index = {v: RESERVED + k for k, v in enumerate(c["categories"])}
                categorical.append(np.array([MISSING if v is None else index.get(v, UNSEEN)
                                             for v in map(as_category, cells[c["name"]])], dtype=np.int64))
        data = {"numeric": (np.stack(numeric, 1) if numeric else np.zeros((n, 0))).astype(np.float32),
                "categorical": np.stack(categorical, 1) if categorical else np.zeros((n, 0), dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)


# -- the model ---------------------------------------------------------------------------------------------------------
class TabularEmbeddings(nn.Module):
    """One token per column: x * W_j for a number (the missing-value token M_j for NaN), an embedding row for a
    category code; + the column's embedding; a [CLS] token in front."""

    def __init__(self, c):
        super().__init__()
        d, sizes = (c.token_size if c.backbone == "mlp" else c.hidden_size), list(c.vocab_sizes)
        self.numeric_weight = nn.Parameter(torch.zeros(c.num_numeric, d))
        self.numeric_missing = nn.Parameter(torch.zeros(c.num_numeric, d))
        self.category_embeddings = nn.Embedding(max(sum(sizes), 1), d)
        self.column_embeddings = nn.Parameter(torch.zeros(c.num_numeric + len(sizes), d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if c.cls_token else None
        self.offsets = [sum(sizes[:j]) for j in range(len(sizes))]   # a plain list: no buffer to initialise

    def forward(self, numeric, categorical):
        w = self.numeric_weight
        values = numeric.to(w.dtype)
        x_num = torch.where(torch.isnan(values)[..., None], self.numeric_missing, values.nan_to_num(0.0)[..., None] * w)
        offsets = torch.tensor(self.offsets, dtype=torch.long, device=categorical.device)
        x_cat = self.category_embeddings(categorical.long() + offsets)
        x = torch.cat([x_num, x_cat], dim=1) + self.column_embeddings
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return x


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.num_heads = c.num_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.bias)
        self.out = nn.Linear(c.hidden_size, c.hidden_size, bias=c.bias)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.hidden_size
        self.norm_first = c.norm_first
        self.attn = SelfAttention(c)
        self.norm1 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(d, c.intermediate_size, bias=c.bias)
        self.fc2 = nn.Linear(c.intermediate_size, d, bias=c.bias)
        self.norm2 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.act = ACT2FN[c.hidden_act]

    def forward(self, x):
        mlp = lambda h: self.fc2(self.act(self.fc1(h)))  # noqa: E731
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + mlp(x))


class RowMLP(nn.Module):
    """The column tokens of a row flattened, then linear layers with the activation between them: (B, 1, H)."""

    def __init__(self, c):
        super().__init__()
        widths = [(c.num_numeric + len(c.vocab_sizes)) * c.token_size] + [c.hidden_size] * c.num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACT2FN[c.activation]

    def forward(self, x):
        states, h = [x], x.flatten(1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
            states.append(h[:, None])
        return h[:, None], states


class SelfsupTabularPreTrainedModel(PreTrainedModel):
    config_class = SelfsupTabularConfig
    base_model_prefix = "tabular"
    main_input_name = "numeric"

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class SelfsupTabularModel(SelfsupTabularPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        c = config
        self.embeddings = TabularEmbeddings(c)
        if c.backbone == "mlp":
            self.mlp = RowMLP(c)
        else:
            self.layers = nn.ModuleList(TransformerLayer(c) for _ in range(c.num_layers))
            self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps) if c.final_norm else nn.Identity()
        self.post_init()

    def forward(self, numeric=None, categorical=None, output_hidden_states=None, return_dict=None, **kwargs):
        ref = numeric if numeric is not None else categorical
        b = len(ref)
        if numeric is None:
            numeric = torch.zeros(b, 0)
        if categorical is None:
            categorical = torch.zeros(b, 0, dtype=torch.long)
        x = self.embeddings(numeric, categorical)
        if self.config.backbone == "mlp":
            h, states = self.mlp(x)
        else:
            states = [x]
            for layer in self.layers:
                x = layer(x)
                states.append(x)
            h = self.norm(x)
        pooled = h[:, 0] if self.config.pooling == "first" else h.mean(dim=1)
        hidden = tuple(states) if output_hidden_states else None
        if return_dict is False:
            return (h, pooled) + ((hidden,) if hidden is not None else ())
        return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=pooled, hidden_states=hidden)
