"""Rooms with one-way doors, checked on the source (every import, also those inside functions):
``trainer`` imports neither Django nor the apps, ``mechanisms`` never imports ``runs``, and the
modules of ``runs`` import each other without a circle. Inside ``runs``, import-linter's contracts
(pyproject.toml) keep the rooms apart: pages and API on top, engine and analysis below them, the
launcher's tools beside everything."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved)."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # "from .web import views" imports the module runs.web.views
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]


def test_mechanisms_never_import_runs() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n == "runs" or n.startswith("runs."))
                 for p in _sources("mechanisms")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_trainer_imports_neither_django_nor_the_apps() -> None:
    forbidden = ("django", "runs", "mechanisms", "bilevel_site", "celery", "channels")
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in forbidden)
                 for p in _sources("trainer")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circle_between_modules_of_runs() -> None:
    modules = {_module_name(p): p for p in _sources("runs")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package imports what its __init__ re-exports; that is not a circle through the package.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycles.append([*visiting[visiting.index(name):], name])
            return
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert cycles == []


def test_the_rule_sees_imports_inside_functions() -> None:
    """The checker would catch a lazy import (how circles used to hide)."""
    assert "runs.engine.control" in _imports(ROOT / "runs" / "engine" / "lease.py")
    assert "runs.engine.level2" in _imports(ROOT / "runs" / "tasks.py")


def test_import_linter_contracts_hold() -> None:
    """`lint-imports` over the whole project: every contract in pyproject.toml is kept. In a child process:
    inside pytest, import-linter's option check trips over a class attribute that a plugin adds."""
    lint = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--config",
                           str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-2000:]


def test_the_contracts_cover_every_door() -> None:
    """The contracts that hold are the ones the design names (a contract deleted or narrowed fails here)."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = {(source, target) for c in contracts if c["type"] == "forbidden"
                 for source in c["source_modules"] for target in c["forbidden_modules"]}
    independent = [set(c["modules"]) for c in contracts if c["type"] == "independence"]
    doors = [
        ("trainer", "django"), ("trainer", "runs"), ("trainer", "mechanisms"),
        ("mechanisms", "runs"),
        *((room, page) for room in ("runs.engine", "runs.analysis", "runs.ops", "runs.models", "runs.tasks",
                                    "runs.templatetags", "runs.management", "mechanisms")
          for page in ("runs.web", "runs.api")),
        ("runs.engine", "runs.analysis"), ("runs.engine", "runs.ops"),
        ("runs.analysis", "runs.engine"), ("runs.analysis", "trainer"), ("runs.analysis", "runs.ops"),
        *(("runs.ops", room) for room in ("runs.models", "runs.engine", "runs.analysis", "mechanisms", "trainer",
                                          "django")),
    ]
    assert [door for door in doors if door not in forbidden] == []
    assert {"runs.web", "runs.api"} in independent
