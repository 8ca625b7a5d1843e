"""`app/` reads top-down: cli -> pipelines -> components -> base helpers. Every import (function-local ones too) is
checked, so a pipeline that borrows from another pipeline, or a component that reaches up, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

BASE = {"errors", "config", "io", "console", "run_files", "distributed", "profiler", "quiet"}
# Components in the order data flows; one may import those before it, never those after it or beside it.
COMPONENTS = {"data": 1, "models": 2, "training": 3, "evaluation": 3, "tracking": 4, "report": 5}
LAYER = {**dict.fromkeys(BASE, 0), **dict.fromkeys(COMPONENTS, 1), "preflight": 2, "pipelines": 3, "cli": 4}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `app.*` import in the file."""
    out = []
    package = ".".join(path.relative_to(APP.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "app"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "app":
                continue
            if base == "app":  # `from app import distributed`
                out += [(node.lineno, f"app.{a.name}") for a in node.names]
            else:
                out += [(node.lineno, base)]
    return out


def _unit(module: str) -> str:
    """`app.data.video` -> `data`; `app.pipelines.train` -> `pipelines`; `app.io` -> `io`."""
    return module.split(".")[1] if module.count(".") else module


def _violation(src: str, dst: str) -> str | None:
    a, b = _unit(src), _unit(dst)
    if a not in LAYER or b not in LAYER:
        return f"{b if b not in LAYER else a} is in no layer of this test: add it where it belongs"
    if a == "pipelines" and b == "pipelines":
        return None if src == dst else "a pipeline imports another pipeline"
    if LAYER[b] > LAYER[a]:
        return "imports upward"
    if a in COMPONENTS and b in COMPONENTS and a != b and COMPONENTS[b] >= COMPONENTS[a]:
        return "a component imports one that comes after or beside it"
    return None


def test_imports_go_one_way():
    problems = []
    for path in sorted(APP.rglob("*.py")):
        src = ".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__")
        for line, dst in _imports(path):
            why = _violation(src, dst)
            if why:
                problems.append(f"{path.relative_to(APP.parent)}:{line} imports {dst}: {why}")
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_forbids():
    assert _violation("app.pipelines.train", "app.pipelines.evaluate") == "a pipeline imports another pipeline"
    assert _violation("app.evaluation.generate", "app.training.hooks") is not None  # beside it
    assert _violation("app.data.video", "app.models.setup") is not None  # after it
    assert _violation("app.models.setup", "app.pipelines.train") == "imports upward"
    assert _violation("app.io", "app.data.video") == "imports upward"
    assert _violation("app.pipelines.train", "app.models.setup") is None
    assert _violation("app.report.summary", "app.evaluation.metrics") is None
