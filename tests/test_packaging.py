"""The install: every module of the five package folders is in the wheel, under ``selfsup.``."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

FOLDERS = {"selfsup": "selfsup", "modalities": "selfsup/modalities", "objectives": "selfsup/objectives",
           "backbones": "selfsup/backbones", "recipes": "selfsup/recipes"}


def source_modules() -> set[str]:
    """Every .py file of the package folders, as its path inside the installed ``selfsup`` package."""
    out = set()
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                out.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return out


def test_every_package_folder_has_an_init():
    for folder in FOLDERS:
        for sub in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if sub.name != "__pycache__" and any(sub.glob("*.py")):
                assert (sub / "__init__.py").is_file(), f"{sub} has modules but no __init__.py: it would not install"


@pytest.mark.long
def test_wheel_holds_every_module(tmp_path):
    import shutil

    made_build = not (ROOT / "build").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    if made_build:  # setuptools builds in ROOT/build; leave the checkout as it was
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    wheel = next(tmp_path.glob("selfsup-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"not in the wheel: {missing}"
    assert "selfsup/recipes/bert_mlm.py" in names and not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_recipes_import_as_a_package():
    import importlib

    for path in sorted((ROOT / "recipes").glob("*.py")):
        if path.stem != "__init__":
            importlib.import_module(f"selfsup.recipes.{path.stem}")
