"""Export of a table encoder (``TabularAdapter`` + the shared ``TransformerEncoder``, or the ``MLPBackbone`` of
``--backbone mlp``) as selfsup's own ``transformers`` model, with its processor.

``SelfsupTabularModel`` / ``SelfsupTabularConfig`` (``model_type="selfsup_tabular"``) and
``SelfsupTabularFeatureExtractor``, whose code is the real module
:mod:`selfsup.backbones.remote.modeling_selfsup_tabular` (numpy, torch and transformers only), copied file for file
beside the weights as ``modeling_selfsup_tabular.py`` and named in ``auto_map`` (config.json and
preprocessor_config.json): ``AutoModel`` / ``AutoFeatureExtractor.from_pretrained(DIR, trust_remote_code=True)``
load them where selfsup is not installed. The schema (columns, kinds, categories, scalers fitted on the training
split) is in both configs, so new rows -- a DataFrame or dicts -- are embedded from the export alone.
Weight names: ours ``adapter.*`` -> ``embeddings.*``, ``backbone.*`` -> as they are (an MLP's: ``mlp.*``).

:func:`export_tabular` writes it and checks it: reloaded with the Auto classes, the processor's inputs equal our
encoding of the same rows and the embeddings equal ours to 1e-4 (:func:`check_tabular_export`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from selfsup.backbones.mlp import MLPBackbone
from selfsup.backbones.remote import modeling_selfsup_tabular as remote
from selfsup.backbones.transformer import TransformerEncoder
from selfsup.convert import check_close, fill_model, max_abs_diff
from selfsup.errors import SelfsupError
from selfsup.export import write_model_card
from selfsup.modalities.tabular.adapter import TabularAdapter
from selfsup.modalities.tabular.data import encode, from_frame
from selfsup.modalities.tabular.schema import Schema
from selfsup.types import Encoder

MODEL_TYPE = "selfsup_tabular"
MODELING_FILE = "modeling_selfsup_tabular.py"
AUTO_MAP = {"AutoConfig": "modeling_selfsup_tabular.SelfsupTabularConfig",
            "AutoModel": "modeling_selfsup_tabular.SelfsupTabularModel",
            "AutoFeatureExtractor": "modeling_selfsup_tabular.SelfsupTabularFeatureExtractor"}


def export_schema(schema: Schema) -> dict[str, Any]:
    """What the processor needs of the schema (the label's classes too, for a head a user puts on top)."""
    return schema.to_dict()


def mlp_tabular_config(encoder: Encoder, schema: Schema) -> remote.SelfsupTabularConfig:
    """The config of a feature tokenizer + :class:`MLPBackbone` (one output token: either pooling is that token)."""
    g, a = encoder.backbone.config, encoder.adapter.config
    if a.cls_token or g.num_tokens != a.num_columns or g.token_size != encoder.adapter.hidden_size:
        raise SelfsupError("an MLP table encoder reads the column tokens alone (no [CLS]), as wide as its input")
    return remote.SelfsupTabularConfig(
        num_numeric=a.num_numeric, vocab_sizes=list(a.vocab_sizes), cls_token=False, hidden_size=g.hidden_size,
        num_layers=g.num_layers, backbone="mlp", token_size=g.token_size, activation=g.activation, pooling="first",
        schema=export_schema(schema), auto_map=dict(AUTO_MAP))


def tabular_config(encoder: Encoder, schema: Schema) -> remote.SelfsupTabularConfig:
    adapter, backbone = encoder.adapter, encoder.backbone
    if isinstance(adapter, TabularAdapter) and isinstance(backbone, MLPBackbone):
        return mlp_tabular_config(encoder, schema)
    if not isinstance(adapter, TabularAdapter) or not isinstance(backbone, TransformerEncoder):
        raise SelfsupError("only a TabularAdapter + TransformerEncoder or MLPBackbone encoder exports as a selfsup "
                           "table model")
    g, a = backbone.config, adapter.config
    if g.causal:
        raise SelfsupError("a causal Transformer does not export as a table encoder")
    if encoder.pooling not in ("first", "mean") or (encoder.pooling == "first" and not a.cls_token):
        raise SelfsupError(f"a table export pools its [CLS] token or the mean over the tokens, not "
                           f"{encoder.pooling!r}")
    return remote.SelfsupTabularConfig(
        num_numeric=a.num_numeric, vocab_sizes=list(a.vocab_sizes), cls_token=a.cls_token, hidden_size=g.hidden_size,
        num_layers=g.num_layers, num_heads=g.num_heads, intermediate_size=g.intermediate_size, hidden_act=g.activation,
        norm_first=g.norm_first, final_norm=g.final_norm, layer_norm_eps=g.layer_norm_eps, bias=g.bias,
        pooling=encoder.pooling, schema=export_schema(schema), auto_map=dict(AUTO_MAP))


def to_hf_state_dict(encoder: Encoder) -> dict[str, torch.Tensor]:
    out = {}
    backbone = "mlp." if isinstance(encoder.backbone, MLPBackbone) else ""
    for key, value in encoder.state_dict().items():
        if key.startswith("adapter."):
            out["embeddings." + key[len("adapter."):]] = value
        elif key.startswith("backbone."):
            out[backbone + key[len("backbone."):]] = value
        else:
            raise RuntimeError(f"table export: no name for {key}")
    return out


def encoder_to_hf(encoder: Encoder, schema: Schema) -> remote.SelfsupTabularModel:
    return fill_model(remote.SelfsupTabularModel(tabular_config(encoder, schema)), to_hf_state_dict(encoder), "table")


def processor_for(schema: Schema) -> remote.SelfsupTabularFeatureExtractor:
    return remote.SelfsupTabularFeatureExtractor(schema=export_schema(schema),
                                                 auto_map={"AutoFeatureExtractor": AUTO_MAP["AutoFeatureExtractor"]})


def rows_to_batch(rows: Sequence[Mapping[str, Any]], schema: Schema) -> dict[str, torch.Tensor]:
    """Our encoding of raw rows (dicts of cells) as a batch."""
    import pandas as pd

    arrays = encode(from_frame(pd.DataFrame(list(rows)), "rows"), schema, with_labels=False)
    return {"numeric": torch.from_numpy(arrays.numeric), "categorical": torch.from_numpy(arrays.categorical)}


@torch.no_grad()
def check_tabular_export(encoder: Encoder, schema: Schema, out_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                         atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` with ``AutoModel`` and ``AutoFeatureExtractor``; the processor's inputs of ``rows`` must
    equal our encoding exactly, and the token states and row embeddings ours to ``atol``."""
    from transformers import AutoFeatureExtractor, AutoModel

    encoder = encoder.float().cpu().eval()
    processor = AutoFeatureExtractor.from_pretrained(str(out_dir), trust_remote_code=True)
    model = AutoModel.from_pretrained(str(out_dir), trust_remote_code=True).eval()
    inputs = processor(list(rows))
    batch = rows_to_batch(rows, schema)
    for key in ("numeric", "categorical"):
        if not torch.equal(torch.nan_to_num(inputs[key], nan=-999.0), torch.nan_to_num(batch[key], nan=-999.0)):
            raise SelfsupError(f"the exported processor's {key} inputs differ from ours")
    theirs = model(**inputs)
    out, _ = encoder(batch)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(out.last_hidden_state, theirs.last_hidden_state),
                                                      "table token states", atol),
            "export/max_abs_pooled_diff": check_close(max_abs_diff(encoder.pooled(batch), theirs.pooler_output),
                                                      "row embeddings", atol)}


USAGE = """from transformers import AutoFeatureExtractor, AutoModel

processor = AutoFeatureExtractor.from_pretrained("{path}", trust_remote_code=True)
model = AutoModel.from_pretrained("{path}", trust_remote_code=True).eval()
rows = [{example}]   # or a pandas DataFrame with these columns
out = model(**processor(rows))
out.pooler_output       # (B, {width}) row embeddings ({pooling})
out.last_hidden_state   # (B, {tokens}, {width}) {states}"""


def export_tabular(encoder: Encoder, schema: Schema, out_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                   metrics: dict | None = None, run: dict | None = None, atol: float = 1e-4) -> dict[str, float]:
    """Write ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, ``modeling_selfsup_tabular.py``
    and ``README.md``; reload and compare on ``rows`` (raw cells, e.g. a few training rows); returns the check's
    figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.float().cpu().eval()
    encoder_to_hf(encoder, schema).save_pretrained(str(out))
    processor_for(schema).save_pretrained(str(out))
    shutil.copyfile(remote.__file__, out / MODELING_FILE)
    figures = check_tabular_export(encoder, schema, out, rows, atol)
    names = [c.name for c in schema.columns]
    example = {n: rows[0].get(n) if rows else None for n in names[:4]}
    example = "{" + ", ".join(f"{k!r}: {_plain(v)!r}" for k, v in example.items()) + (", ...}" if len(names) > 4 else "}")
    g = encoder.backbone.config
    mlp = isinstance(encoder.backbone, MLPBackbone)
    shape = (f"An MLP over a table's flattened column tokens ({g.num_layers} layers of {g.hidden_size}; " if mlp else
             f"A Transformer over a table's column tokens ({g.num_layers} layers, width {g.hidden_size}; ")
    write_model_card(
        out, title="selfsup table encoder", pipeline_tag="feature-extraction",
        summary=shape + f"{len(schema.numeric)} numeric and {len(schema.categorical)} categorical columns) with its "
                "feature tokenizer and its fitted schema, as selfsup's own transformers model; its code is "
                "modeling_selfsup_tabular.py beside the weights.",
        metrics={**(metrics or {}), **figures}, run=run or {},
        usage=USAGE.format(path=out, example=example, width=g.hidden_size, tokens=1 if mlp else len(names) + 1,
                           pooling="the MLP's output" if mlp else "the [CLS] token" if encoder.pooling == "first"
                           else "the mean over the tokens",
                           states="the MLP's output, one token" if mlp else "[CLS] + one token per column"),
        tags=("tabular", "mlp" if mlp else "ft-transformer"))
    return figures


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["export_tabular", "check_tabular_export", "tabular_config", "to_hf_state_dict", "encoder_to_hf",
           "processor_for", "rows_to_batch", "MODEL_TYPE", "MODELING_FILE", "AUTO_MAP"]
