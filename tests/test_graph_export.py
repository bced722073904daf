"""The graph encoder export: AutoModel reload equals ours (1e-4), also in a Python where selfsup cannot be
imported, and the GIN rebuilt from plain torch_geometric modules with the model card's lines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfsup.backbones import remote
from selfsup.backbones.gnn import gat, gin
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.backbones.remote import modeling_selfsup_graph
from selfsup.graphs import graph_index, pack
from selfsup.modalities.graph import GraphAdapter, GraphConfig, builtin_graphs, collate_graphs
from selfsup.backbones.hf_graph import (MODELING_FILE, PLAIN_FILE, PLAIN_HEADING, export_graph, hf_inputs)
from selfsup.types import Encoder

NO_SELFSUP = "import sys\nsys.modules['selfsup'] = None   # `import selfsup` now raises ImportError\n"


@pytest.fixture(scope="module")
def data():
    graphs = builtin_graphs(24, seed=0, self_loops=True)
    return graphs, collate_graphs(graphs.graphs[:10])


def trained(encoder: Encoder, batch) -> Encoder:
    """Batch-norm statistics that are not the initial ones (a training-mode pass), then eval."""
    with torch.no_grad():
        encoder.train()(batch)
    return encoder.eval()


def run_isolated(code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh Python that cannot import selfsup, with transformers' module cache in ``cwd``."""
    env = {**os.environ, "HF_MODULES_CACHE": str(cwd / "hf_modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", NO_SELFSUP + code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def transformer(width: int) -> TransformerEncoder:
    """The graph recipe's Transformer (ViT wiring: pre-LN, final norm) with dropout, off in eval."""
    return TransformerEncoder(transformer_config(dict(hidden_size=width, num_layers=2, num_heads=2,
                                                      intermediate_size=2 * width), "vit", dropout=0.1))


@pytest.mark.parametrize("kind, pooling, layers", [("gin", "sum", "last"), ("gat", "mean", "all"),
                                                   ("transformer", "max", "last"), ("transformer", "mean", "all")])
def test_export_reloads_with_automodel_and_matches(tmp_path, data, kind, pooling, layers):
    from transformers import AutoModel

    graphs, batch = data
    pe = 4 if kind == "transformer" else 0
    if pe:   # the Transformer's positions: a random-walk encoding of every node, through the adapter's pe_proj
        graphs = builtin_graphs(24, seed=0, self_loops=True, structural_encoding=pe)
        batch = collate_graphs(graphs.graphs[:10])
    f = graphs.num_features
    backbone = {"gin": lambda: gin(16, 16, 3), "gat": lambda: gat(16, 16, 2, heads=2),
                "transformer": lambda: transformer(16)}[kind]()
    adapter = GraphAdapter(GraphConfig(num_features=f, pe_size=pe), hidden_size=16)
    encoder = trained(Encoder(adapter, backbone, pooling, layers), batch)
    figures = export_graph(encoder, tmp_path / "export", batch)
    assert figures["export/max_abs_hidden_diff"] <= 1e-4 and figures["export/max_abs_pooled_diff"] <= 1e-4
    export = tmp_path / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "selfsup_graph" and config["auto_map"]["AutoModel"].startswith("modeling_selfsup")
    shipped = (export / MODELING_FILE).read_bytes()
    assert shipped == Path(modeling_selfsup_graph.__file__).read_bytes(), "the repo's module, file for file"
    assert "selfsup." not in shipped.decode().split('"""', 2)[2], "the shipped code imports no selfsup"
    model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
    with torch.no_grad():
        theirs = model(**hf_inputs(batch), output_hidden_states=True)
        ours, mask = encoder(batch, output_hidden_states=True)
    assert (pack(ours.last_hidden_state, mask) - theirs.last_hidden_state).abs().max() <= 1e-4
    assert (encoder.pooled(batch) - theirs.pooler_output).abs().max() <= 1e-4
    assert len(theirs.hidden_states) == len(ours.hidden_states)
    assert (PLAIN_HEADING in (export / "README.md").read_text()) == (kind == "gin")
    if kind == "transformer":   # a graph's nodes attend within their graph only: one graph alone gives its rows
        alone = collate_graphs(graphs.graphs[3:4])
        with torch.no_grad():
            single = model(**hf_inputs(alone)).last_hidden_state
        first = int(batch["num_nodes"][:3].sum())
        torch.testing.assert_close(single, theirs.last_hidden_state[first:first + len(single)], atol=1e-5, rtol=1e-5)


@pytest.mark.long
def test_the_export_loads_where_selfsup_is_not_importable(tmp_path, data):
    graphs, batch = data
    encoder = trained(Encoder(GraphAdapter(GraphConfig(num_features=graphs.num_features, node_encoder="none")),
                              gin(graphs.num_features, 16, 2), pooling="max"), batch)
    export_graph(encoder, tmp_path / "export", batch)
    save_file({k: v.contiguous() for k, v in hf_inputs(batch).items()}, str(tmp_path / "inputs.safetensors"))
    run_isolated("""
try:
    import selfsup  # noqa: F401
    raise SystemExit("selfsup is importable")
except ImportError:
    pass
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
model = AutoModel.from_pretrained("export", trust_remote_code=True).eval()
assert "selfsup" not in type(model).__module__.split(".")[0]
with torch.no_grad():
    out = model(**load_file("inputs.safetensors"))
save_file({"nodes": out.last_hidden_state, "pooled": out.pooler_output}, "outputs.safetensors")
""", tmp_path)
    theirs = load_file(str(tmp_path / "outputs.safetensors"))
    with torch.no_grad():
        out, mask = encoder(batch)
    assert (pack(out.last_hidden_state, mask) - theirs["nodes"]).abs().max() <= 1e-4
    assert (encoder.pooled(batch) - theirs["pooled"]).abs().max() <= 1e-4


@pytest.mark.long
def test_the_model_cards_plain_pyg_lines_give_our_embeddings(tmp_path, data):
    graphs, batch = data
    encoder = trained(Encoder(GraphAdapter(GraphConfig(num_features=graphs.num_features), hidden_size=12),
                              gin(12, 16, 3), pooling="mean"), batch)
    export = tmp_path / "export"
    export_graph(encoder, export, batch)
    card = (export / "README.md").read_text()
    snippet = card.split(PLAIN_HEADING, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    save_file({"x": batch["node_features"], "edge_index": batch["edge_index"],
               "batch": graph_index(batch["num_nodes"])}, str(export / "batch.safetensors"))
    (export / "plain.py").write_text(NO_SELFSUP + "from safetensors.torch import load_file, save_file\n"
                                     "globals().update(load_file('batch.safetensors'))\n" + snippet +
                                     "\nsave_file({'h': h, 'graph_embedding': graph_embedding}, 'plain_out.safetensors')\n")
    run_isolated(open(export / "plain.py").read(), export)
    plain = load_file(str(export / "plain_out.safetensors"))
    assert set(load_file(str(export / PLAIN_FILE))) >= {"convs.0.nn.0.weight", "norms.2.running_mean", "acts.1.weight",
                                                      "feature_proj.weight"}
    with torch.no_grad():
        out, mask = encoder(batch)
    assert (pack(out.last_hidden_state, mask) - plain["h"]).abs().max() <= 1e-4
    assert (encoder.pooled(batch) - plain["graph_embedding"]).abs().max() <= 1e-4


def test_the_remote_package_imports_nothing_of_selfsup():
    source = Path(modeling_selfsup_graph.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in ("__future__", "torch", "torch_geometric", "transformers")
               for line in imports), imports
    assert Path(remote.__file__).name == "__init__.py"
