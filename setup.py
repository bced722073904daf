"""Packages are discovered, not listed: every folder with an ``__init__.py`` under the five top-level folders
installs as ``selfsup.<folder>.<subfolder>...``, so a new subfolder cannot drop out of an install
(``tests/test_packaging.py`` builds the wheel and checks it). Everything else is in ``pyproject.toml``."""
from pathlib import Path

from setuptools import setup

ROOTS = {"selfsup": "selfsup", "selfsup.modalities": "modalities", "selfsup.objectives": "objectives",
         "selfsup.backbones": "backbones", "selfsup.recipes": "recipes"}


def discover() -> tuple[list[str], dict[str, str]]:
    here = Path(__file__).resolve().parent
    packages, dirs = [], {}
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            package = ".".join([name, *rel.parts])
            packages.append(package)
            dirs[package] = init.parent.relative_to(here).as_posix()
    return packages, dirs


packages, package_dir = discover()
setup(packages=packages, package_dir=package_dir)
