"""Recipe helpers take typed settings, not the command line: in recipes/, no function has a parameter annotated
``Namespace`` (or named ``args``, the parsed command line's name), nothing assigns to an attribute of ``args``
(``args.x = ...``, ``setattr(args, ...)``, ``del args.x``, ``vars(args)[...] = ...``), and ``args`` itself is handed
only to what turns it into settings (``settings_from``, ``TrainingSettings.from_args``).

Every module's source is read with ``ast``; DESIGN.md's recipe shape is the rule."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SETTINGS_BUILDERS = {"settings_from", "from_args"}   # what may be given the parsed command line


def _names_namespace(annotation: ast.expr | None) -> bool:
    return annotation is not None and "Namespace" in ast.unparse(annotation)


def _is_args(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "args"


def _writes_args(target: ast.expr) -> bool:
    """``args.x``, ``vars(args)[k]`` / ``args.__dict__[k]``, or a tuple of targets holding one."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_writes_args(t) for t in target.elts)
    if isinstance(target, ast.Attribute):
        return _is_args(target.value)
    if isinstance(target, ast.Subscript):
        inner = target.value
        if isinstance(inner, ast.Attribute):
            return _is_args(inner.value)
        return (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "vars"
                and any(_is_args(a) for a in inner.args))
    return False


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def problems(source: str, where: str) -> list[str]:
    """What in ``source`` hands the command line to a helper or changes it, in line order."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        said = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a, name = node.args, getattr(node, "name", "<lambda>")
            for param in [p for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p is not None]:
                if _names_namespace(param.annotation):
                    found.append((node.lineno, f"{where}:{node.lineno}: {name}() takes a Namespace ({param.arg})"))
                elif param.arg == "args":
                    found.append((node.lineno, f"{where}:{node.lineno}: {name}() takes the command line (args)"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(_writes_args(t) for t in targets):
                said = "changes the command line in place"
        elif isinstance(node, ast.Call):
            callee = _callee(node)
            if callee in ("setattr", "delattr") and node.args and _is_args(node.args[0]):
                said = f"changes the command line in place ({callee})"
            elif callee not in {*SETTINGS_BUILDERS, "setattr", "delattr", "vars"} and (
                    any(_is_args(a) for a in node.args) or any(_is_args(k.value) for k in node.keywords)):
                said = f"hands the command line to {callee}()"
        if said:
            found.append((node.lineno, f"{where}:{node.lineno}: {said}"))
    return [message for _, message in sorted(found, key=lambda item: item[0])]


def recipe_problems(root: Path) -> list[str]:
    return [p for path in sorted((root / "recipes").glob("*.py"))
            for p in problems(path.read_text(encoding="utf-8"), str(path.relative_to(root)))]


def test_recipe_helpers_take_settings_and_leave_the_command_line_alone():
    assert recipe_problems(ROOT) == []


def test_the_check_names_each_way_round_it(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.py").write_text(
        "from argparse import Namespace\n"
        "def build(args: Namespace):\n    pass\n"
        "def load(opts: 'argparse.Namespace', args=None):\n    pass\n"
        "def main(argv):\n"
        "    args = parse_args(build_parser(), argv)\n"
        "    run = settings_from(Run, args)\n"
        "    settings = TrainingSettings.from_args(args, max_steps=3)\n"
        "    args.learning_rate = 0.1\n"
        "    args.max_steps += 1\n"
        "    setattr(args, 'seed', 1)\n"
        "    vars(args)['seed'] = 2\n"
        "    a, args.method = 1, 'simclr'\n"
        "    export(objective, args)\n"
        "    return finish(run, settings, out=args)\n")
    assert recipe_problems(tmp_path) == [
        "recipes/r.py:2: build() takes a Namespace (args)",
        "recipes/r.py:4: load() takes a Namespace (opts)",
        "recipes/r.py:4: load() takes the command line (args)",
        "recipes/r.py:10: changes the command line in place",
        "recipes/r.py:11: changes the command line in place",
        "recipes/r.py:12: changes the command line in place (setattr)",
        "recipes/r.py:13: changes the command line in place",
        "recipes/r.py:14: changes the command line in place",
        "recipes/r.py:15: hands the command line to export()",
        "recipes/r.py:16: hands the command line to finish()",
    ]
