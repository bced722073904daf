"""Imports run one way: recipes -> objectives -> modalities, backbones -> selfsup (the engine).

Every module's imports are read from its source (function-level imports included) and checked against the
layer of the folder it lives in; DESIGN.md's Layers section is the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = {"selfsup": "engine", "backbones": "backbones", "modalities": "modalities", "objectives": "objectives",
          "recipes": "recipes"}
FORBIDDEN = {  # layer -> the selfsup subpackages it must not import
    "engine": {"modalities", "objectives", "backbones", "recipes"},
    "backbones": {"modalities", "objectives", "recipes"},
    "modalities": {"objectives", "recipes"},
    "objectives": {"recipes"},
    "recipes": set(),
}
BARE = {"modalities", "objectives", "backbones", "recipes"}  # must be imported through selfsup.


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


def violations(root: Path) -> list[str]:
    found = []
    for folder, layer in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, module in imported_modules(path.read_text(encoding="utf-8")):
                parts = module.split(".")
                where = f"{path.relative_to(root)}:{line}"
                if module.startswith("."):
                    found.append(f"{where}: relative import {module}")
                elif parts[0] in BARE:
                    found.append(f"{where}: imports {module}; import it as selfsup.{module}")
                elif parts[0] == "selfsup" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                    found.append(f"{where}: the {layer} layer imports {module}")
    return found


def test_imports_run_one_way():
    assert violations(ROOT) == []


def test_a_violation_is_caught(tmp_path):
    """The check itself: the engine importing an objective, even inside a function, is named."""
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "selfsup" / "train.py").write_text("def f():\n    from selfsup.objectives.mlm import mask_tokens\n")
    (tmp_path / "backbones" / "x.py").write_text("import selfsup.modalities.text\n")
    (tmp_path / "modalities" / "y.py").write_text("from selfsup.objectives import kmeans\nimport objectives\n")
    (tmp_path / "objectives" / "z.py").write_text("from selfsup.modalities.text import TextAdapter\n")
    found = violations(tmp_path)
    assert found == ["selfsup/train.py:2: the engine layer imports selfsup.objectives.mlm.mask_tokens",
                     "backbones/x.py:1: the backbones layer imports selfsup.modalities.text",
                     "modalities/y.py:1: the modalities layer imports selfsup.objectives.kmeans",
                     "modalities/y.py:2: imports objectives; import it as selfsup.objectives"]
