"""The table encoder export: AutoModel + AutoFeatureExtractor reload equals ours (1e-4) on raw rows (a DataFrame or
dicts, with missing cells and an unseen category), also in a Python where selfsup cannot be imported."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from selfsup.backbones.hf_tabular import MODELING_FILE, export_tabular, rows_to_batch
from selfsup.backbones.mlp import MLPBackbone, MLPConfig
from selfsup.backbones.remote import modeling_selfsup_tabular
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.tabular import TabularAdapter, TabularConfig, from_frame, infer_schema
from selfsup.types import Encoder
from tests.test_graph_export import run_isolated

FRAME = pd.DataFrame({"age": [39, 50, 38, 53, np.nan, 28], "job": ["clerk", "manager", "?", "clerk", "cook", "cook"],
                      "hours": [40.0, 13.0, 40.0, 40.0, 20.0, 45.5], "label": ["a", "b", "a", "b", "a", "a"]})
NEW_ROWS = [{"age": 31, "job": "pilot", "hours": 50}, {"age": None, "job": "clerk", "hours": "12"},
            {"age": 70, "job": None, "hours": 99.0, "label": "a"}]


def encoder_and_schema(scaling: str, pooling: str = "first", backbone: str = "transformer"):
    schema = infer_schema([from_frame(FRAME, "frame")], label="label", scaling=scaling)
    torch.manual_seed(0)
    mlp = backbone == "mlp"
    adapter = TabularAdapter(TabularConfig(len(schema.numeric), schema.vocab_sizes, cls_token=not mlp),
                             8 if mlp else 16)
    if mlp:
        backbone = MLPBackbone(MLPConfig(num_tokens=adapter.config.num_columns, token_size=8, hidden_size=24,
                                         num_layers=3, activation="gelu", dropout=0.1))
    else:
        backbone = TransformerEncoder(transformer_config(dict(hidden_size=16, num_layers=2, num_heads=2,
                                                              intermediate_size=32), "vit", dropout=0.1))
    with torch.no_grad():   # weights that are not the initial ones
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return Encoder(adapter, backbone, pooling).eval(), schema


@pytest.mark.parametrize("scaling, pooling, backbone", [("quantile", "first", "transformer"),
                                                        ("standard", "mean", "transformer"),
                                                        ("quantile", "first", "mlp")])
def test_export_reloads_with_the_auto_classes_and_matches(tmp_path, scaling, pooling, backbone):
    from transformers import AutoFeatureExtractor, AutoModel

    encoder, schema = encoder_and_schema(scaling, pooling, backbone)
    rows = FRAME.to_dict("records")
    figures = export_tabular(encoder, schema, tmp_path / "export", rows)
    assert figures["export/max_abs_hidden_diff"] <= 1e-4 and figures["export/max_abs_pooled_diff"] <= 1e-4
    export = tmp_path / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "selfsup_tabular" and config["schema"]["columns"][0]["scaling"] == scaling
    assert config["backbone"] == backbone
    shipped = (export / MODELING_FILE).read_bytes()
    assert shipped == Path(modeling_selfsup_tabular.__file__).read_bytes(), "the repo's module, file for file"
    processor = AutoFeatureExtractor.from_pretrained(export, trust_remote_code=True)
    model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
    for given in (pd.DataFrame(NEW_ROWS), NEW_ROWS, {k: [r.get(k) for r in NEW_ROWS] for k in ("age", "job", "hours")}):
        inputs = processor(given)
        ours = rows_to_batch(NEW_ROWS, schema)
        torch.testing.assert_close(inputs["numeric"], ours["numeric"], equal_nan=True, rtol=0, atol=0)
        assert torch.equal(inputs["categorical"], ours["categorical"])
        with torch.no_grad():
            theirs = model(**inputs)
            mine, _ = encoder(ours)
        assert theirs.last_hidden_state.shape == (3, 1 if backbone == "mlp" else 4, mine.last_hidden_state.shape[-1])
        assert (theirs.last_hidden_state - mine.last_hidden_state).abs().max() <= 1e-4
        assert (theirs.pooler_output - encoder.pooled(ours)).abs().max() <= 1e-4
    assert inputs["categorical"][0, 0] == 1 and inputs["categorical"][2, 0] == 0, "unseen 'pilot', missing job"
    assert torch.isnan(inputs["numeric"][1, 0]), "a missing age"
    with pytest.raises(ValueError, match="row 0, column hours: 'many' is not a finite number"):
        processor([{"age": 1, "job": "cook", "hours": "many"}])
    with pytest.raises(ValueError, match=r"no column\(s\) \['hours'\]"):
        processor([{"age": 1, "job": "cook"}])


@pytest.mark.long
def test_the_export_embeds_new_rows_where_selfsup_is_not_importable(tmp_path):
    encoder, schema = encoder_and_schema("quantile")
    export_tabular(encoder, schema, tmp_path / "export", FRAME.to_dict("records"))
    (tmp_path / "rows.json").write_text(json.dumps(NEW_ROWS))
    run_isolated("""
try:
    import selfsup  # noqa: F401
    raise SystemExit("selfsup is importable")
except ImportError:
    pass
import json
import pandas as pd
import torch
from safetensors.torch import save_file
from transformers import AutoFeatureExtractor, AutoModel
processor = AutoFeatureExtractor.from_pretrained("export", trust_remote_code=True)
model = AutoModel.from_pretrained("export", trust_remote_code=True).eval()
assert "selfsup" not in type(model).__module__.split(".")[0]
with torch.no_grad():
    out = model(**processor(pd.DataFrame(json.load(open("rows.json")))))
save_file({"tokens": out.last_hidden_state.contiguous(), "pooled": out.pooler_output.contiguous()}, "outputs.safetensors")
""", tmp_path)
    theirs = load_file(str(tmp_path / "outputs.safetensors"))
    batch = rows_to_batch(NEW_ROWS, schema)
    with torch.no_grad():
        out, _ = encoder(batch)
    assert (out.last_hidden_state - theirs["tokens"]).abs().max() <= 1e-4
    assert (encoder.pooled(batch) - theirs["pooled"]).abs().max() <= 1e-4


def test_the_remote_module_imports_nothing_of_selfsup():
    source = Path(modeling_selfsup_tabular.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in ("__future__", "math", "numpy", "torch", "transformers")
               for line in imports), imports
