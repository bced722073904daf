"""Imports run one way: recipes -> objectives -> modalities, backbones -> selfsup (the engine); objectives know no
modality.

Every module's imports are read from its source (function-level imports included) and checked against the
layer of the folder it lives in; DESIGN.md's Layers section is the rule. On top of the layers:

* an objective module imports no modality and no conversion, and names no batch key of any adapter (a string
  equal to one of the ``batch_keys`` the adapters declare); only the conversions to transformers (``hf_*.py``,
  which build concrete parts) may import modalities, in objectives/ and backbones/ alike. The named sizes on
  concrete parts are composition, as the recipes are, and live in ``recipes/builders/``;
* nothing imports dynamically (``importlib`` / ``__import__``) except the objective registry, whose targets are
  checked to be objective modules;
* every top-level folder holding Python code is a known layer or one of the folders around them;
* no relative imports, but in the code an export ships (``backbones/remote/``), which the Hub loads file by file.
"""
from __future__ import annotations

from pathlib import Path

import ast
import importlib
import inspect
import pkgutil
from tests.conftest import ROOT

LAYERS = {"selfsup": "engine", "backbones": "backbones", "modalities": "modalities", "objectives": "objectives",
          "recipes": "recipes"}
OTHER_FOLDERS = {"tests", "benchmarks", "docs", "build", "dist"}   # not installed, not layered
FORBIDDEN = {  # layer -> the selfsup subpackages it must not import
    "engine": {"modalities", "objectives", "backbones", "recipes"},
    "backbones": {"modalities", "objectives", "recipes"},
    "modalities": {"objectives", "recipes"},
    "objectives": {"recipes", "modalities"},
    "recipes": set(),
}
BARE = {"modalities", "objectives", "backbones", "recipes"}  # must be imported through selfsup.
REGISTRY = Path("objectives") / "registry.py"


def is_composition(path: Path) -> bool:
    """A conversion to transformers (``hf_*.py``): it builds concrete parts, so it may import an adapter."""
    return path.name.startswith("hf_")


def is_remote_code(rel: Path) -> bool:
    """Code an export ships (``backbones/remote/modeling_*.py``): standalone modules that import their siblings
    relatively, as the Hub's remote code does."""
    return rel.parts[:2] == ("backbones", "remote") and rel.name.startswith("modeling_")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``; relative imports are not used in this project."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                out.append((node.lineno, "." * node.level + base))
            else:  # `from selfsup import kmeans` imports selfsup.kmeans
                out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def dynamic_imports(source: str) -> list[int]:
    """Lines of ``importlib.import_module(...)``, ``__import__(...)`` or an ``import importlib``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                lines.append(node.lineno)
    return lines


def strings(source: str) -> list[tuple[int, str]]:
    """(line, value) of every string constant of ``source``."""
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def violations(root: Path, batch_keys: set[str] = frozenset()) -> list[str]:
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in LAYERS and folder.name not in OTHER_FOLDERS and any(folder.rglob("*.py")):
            found.append(f"{folder.name}/: a top-level folder of code that is no layer")
    for folder, layer in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            source = path.read_text(encoding="utf-8")
            composes = is_composition(path) and layer in ("objectives", "backbones")
            for line, module in imported_modules(source):
                parts = module.split(".")
                where = f"{rel}:{line}"
                if module.startswith("."):
                    if not is_remote_code(rel):
                        found.append(f"{where}: relative import {module}")
                elif parts[0] in BARE:
                    found.append(f"{where}: imports {module}; import it as selfsup.{module}")
                elif parts[0] == "selfsup" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                    if not (composes and parts[1] == "modalities"):
                        found.append(f"{where}: the {layer} layer imports {module}")
                elif (layer == "objectives" and not composes and parts[:2] == ["selfsup", "objectives"]
                      and len(parts) > 2 and any(p.startswith("hf_") for p in parts)):
                    found.append(f"{where}: an objective imports the composition module {module}")
            if rel != REGISTRY:
                found += [f"{rel}:{line}: a dynamic import" for line in dynamic_imports(source)]
            if layer == "objectives" and not composes and rel != REGISTRY:
                found += [f"{rel}:{line}: names the batch key {value!r} of a modality"
                          for line, value in strings(source) if value in batch_keys]
    return found


def adapter_batch_keys() -> set[str]:
    """Every batch key the installed adapters declare (``Adapter.batch_keys``)."""
    import selfsup.modalities as modalities
    from selfsup.types import Adapter

    for info in pkgutil.walk_packages(modalities.__path__, "selfsup.modalities."):
        importlib.import_module(info.name)
    keys, todo = set(), list(Adapter.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        declared = inspect.getattr_static(cls, "batch_keys", ())
        if isinstance(declared, (tuple, list)):
            keys |= set(declared)
    return keys


def test_imports_run_one_way():
    keys = adapter_batch_keys()
    assert {"pixel_values", "input_ids", "input_values", "attention_mask"} <= keys
    assert violations(ROOT, keys) == []


def test_the_registry_imports_only_objective_modules():
    from selfsup.objectives import registry

    for method in registry.METHODS.values():
        path = ROOT / "objectives" / Path(*method.module.split(".")).with_suffix(".py")
        assert path.is_file() and not is_composition(path), method
        assert method.module_path == f"selfsup.objectives.{method.module}", method
        cls, config = method.classes()
        assert cls.__module__ == method.module_path
        assert config is None or config.__module__ == cls.__module__
    source = (ROOT / REGISTRY).read_text(encoding="utf-8")
    assert source.count("importlib.import_module(") == 1 and "importlib.import_module(self.module_path)" in source


def test_a_violation_is_caught(tmp_path):
    """The check itself: the engine importing an objective, even inside a function, an objective importing a
    modality or naming its batch key, a dynamic import and a stray folder of code are each named."""
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "selfsup" / "train.py").write_text("def f():\n    from selfsup.objectives.masked.mlm import mask_tokens\n")
    (tmp_path / "backbones" / "x.py").write_text("import selfsup.modalities.text\n")
    (tmp_path / "modalities" / "y.py").write_text("from selfsup.objectives import kmeans\nimport objectives\n")
    (tmp_path / "objectives" / "z.py").write_text("from selfsup.modalities.text import TextAdapter\n"
                                                  "def f(batch):\n    return batch['pixel_values']\n")
    (tmp_path / "objectives" / "w.py").write_text("import importlib\nm = importlib.import_module('selfsup.modalities')\n"
                                                  "from selfsup.objectives.masked.hf_mae import compose_mae\n")
    (tmp_path / "objectives" / "build.py").write_text("from selfsup.modalities.image import ImageAdapter\n")
    (tmp_path / "objectives" / "hf_ok.py").write_text("from selfsup.modalities.text import TextAdapter\n")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "p.py").write_text("x = 1\n")
    found = violations(tmp_path, {"pixel_values"})
    assert found == ["plugins/: a top-level folder of code that is no layer",
                     "selfsup/train.py:2: the engine layer imports selfsup.objectives.masked.mlm.mask_tokens",
                     "backbones/x.py:1: the backbones layer imports selfsup.modalities.text",
                     "modalities/y.py:1: the modalities layer imports selfsup.objectives.kmeans",
                     "modalities/y.py:2: imports objectives; import it as selfsup.objectives",
                     "objectives/build.py:1: the objectives layer imports selfsup.modalities.image.ImageAdapter",
                     "objectives/w.py:3: an objective imports the composition module "
                     "selfsup.objectives.masked.hf_mae.compose_mae",
                     "objectives/w.py:2: a dynamic import",
                     "objectives/z.py:1: the objectives layer imports selfsup.modalities.text.TextAdapter",
                     "objectives/z.py:3: names the batch key 'pixel_values' of a modality"]
