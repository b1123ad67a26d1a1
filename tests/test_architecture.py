"""The layer rules of docs/architecture.md, checked on the source: no import circle, and lower layers never import
higher ones. The graph is built with ``ast`` from every module in ``alignloop/`` (imports inside functions count)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alignloop"
# modules allowed to import inside a function: optional dependencies that may be absent
OPTIONAL = ("ray", "vllm", "deepspeed", "tensorboard", "torch.utils.tensorboard")
# command-line entry points (nothing imports them) defer each command's imports so `--help` answers at once
ENTRY_POINTS = ("alignloop.cli", "alignloop.feedback.cli")
# thin re-export modules at old paths (one release): the only exemption from the layer rules
SHIMS_NOTE = "Deprecated re-export"
LOWER_LAYERS = ("data", "models", "rollout", "rewards", "envs")
ABOVE_LOWER = ("train", "stages", "eval", "feedback", "pipeline", "distributed", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_shim(path: Path) -> bool:
    return SHIMS_NOTE in path.read_text(encoding="utf-8")[:400]


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                found.append((base, inner))
                # `from alignloop.x import y` may import the submodule alignloop.x.y
                found.extend((f"{base}.{a.name}", inner) for a in child.names)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # imports for annotations only never run
            else:
                visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def build_graph() -> tuple[dict[str, set[str]], dict[str, list[str]], dict[str, Path]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    inner_imports: dict[str, list[str]] = {}
    for name, path in files.items():
        for target, inner in imports_of(path):
            if target in files and target != name:
                graph[name].add(target)
                if inner:
                    inner_imports.setdefault(name, []).append(target)
            elif inner and target.split(".")[0] != "alignloop":
                inner_imports.setdefault(name, []).append(target)
    return graph, inner_imports, files


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of module imports, or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH, INNER, FILES = build_graph()


def _edges(rule):
    return [f"{a} -> {b}" for a, targets in sorted(GRAPH.items()) if not is_shim(FILES[a])
            for b in sorted(targets) if rule(a, b)]


def test_no_import_cycle():
    # a package's __init__ re-exporting its submodules is not a cycle with them (Python loads it first)
    graph = {a: {b for b in targets if not (a.startswith(b + ".") and FILES[b].name == "__init__.py")}
             for a, targets in GRAPH.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_algos_import_only_torch_and_the_standard_library():
    import sys

    bad = []
    for name, path in FILES.items():
        if _layer(name) != "algos":
            continue
        for target, _ in imports_of(path):
            top = target.split(".")[0]
            if top in ("torch", "__future__") or top in sys.stdlib_module_names:
                continue
            if target.startswith("alignloop.algos") or not target:
                continue
            if top == "alignloop" and target.rsplit(".", 1)[0].startswith("alignloop.algos"):
                continue
            bad.append(f"{name} -> {target}")
    assert not bad, "algos imports more than torch:\n" + "\n".join(bad)


@pytest.mark.parametrize("lower", LOWER_LAYERS)
def test_lower_layers_import_no_higher_one(lower):
    bad = _edges(lambda a, b: _layer(a) == lower and _layer(b) in ABOVE_LOWER)
    assert not bad, f"{lower} imports a higher layer:\n" + "\n".join(bad)


def test_engine_imports_no_stage_or_application():
    above = ("stages", "eval", "feedback", "pipeline", "distributed", "cli")
    bad = _edges(lambda a, b: _layer(a) == "train" and _layer(b) in above)
    assert not bad, "train/ (the engine) imports the application:\n" + "\n".join(bad)


def test_stage_registry_imports_no_cli_pipeline_or_distributed():
    bad = _edges(lambda a, b: a == "alignloop.stages.registry" and _layer(b) in ("cli", "pipeline", "distributed"))
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = _edges(lambda a, b: b == "alignloop.cli" and a not in ("alignloop.__main__",))
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_are_only_optional_dependencies():
    """Function-level imports dodge nothing: only optional packages (and their own modules) are imported late."""
    bad = []
    for name, targets in sorted(INNER.items()):
        if is_shim(FILES[name]) or name in ENTRY_POINTS:
            continue
        bad.extend(f"{name}: {t}" for t in targets if not _optional(t))
    assert not bad, "imports inside functions:\n" + "\n".join(sorted(set(bad)))


def _optional(module: str) -> bool:
    return any(module == o or module.startswith(o + ".") for o in OPTIONAL)


def test_no_file_over_350_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 350]
    assert not long, "\n".join(long)


def test_ruff_line_length_and_pyflakes_hold():
    """``[tool.ruff]`` in pyproject.toml: lines of at most 120 characters, no unused or undefined names."""
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(PACKAGE)], capture_output=True,
                            text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-4000:]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
