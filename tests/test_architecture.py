"""Guard rails of the package layout (docs/architecture.md): short functions, modules of one
job, no import cycles, ruff clean, and an architecture document that lists every module."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medclip_nb"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_a_screen():
    too_long = []
    for path in _modules().values():
        for fn in _functions(ast.parse(path.read_text())):
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({lines} lines)")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


def test_no_module_does_several_jobs_by_length():
    too_long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules().values()
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)


def _resolve_import(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _import_graph(top_level_only: bool) -> dict[str, set[str]]:
    """module -> package modules it imports (at module top level, or anywhere)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve_import(name, node, path.name == "__init__.py"):
                    if target in modules and target != name:
                        graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exports its submodules; an edge submodule -> parent package
    through `from medclip_nb.data import x` is really an edge to x's own module, so package
    nodes keep only their outgoing edges (their re-exports) and are not entered from inside."""
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    return {m: {t for t in targets if not (t in packages and (m.startswith(t + ".") or m == t))}
            for m, targets in graph.items()}


def test_the_package_has_no_import_cycle():
    # Function-local imports count too: hiding a cycle inside a function is still a cycle.
    cycle = _find_cycle(_without_package_inits(_import_graph(top_level_only=False)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Sibling imports inside functions are allowed only for optional or heavy dependencies; the image
# store's builder is heavy (torch), and `prepare` imports MIMIC-CXR without torch unless asked for a store.
_LAZY_ALLOWED = re.compile(
    r"transformers|matplotlib|sklearn\.manifold|tensorboard|safetensors|IPython|ipywidgets|data\.store_build"
)


# cli.py imports a subcommand's stage when it runs, so `--help` and a bad flag answer at once
# without loading torch.
_LAZY_MODULES = {"medclip_nb.cli"}


def test_sibling_imports_are_at_module_top():
    local = []
    modules = _modules()
    for name, path in modules.items():
        if name in _LAZY_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            for node in ast.walk(fn):
                if (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("medclip_nb"))
                        and not _LAZY_ALLOWED.search(node.module or "")):
                    local.append(f"{path.relative_to(ROOT)}:{node.lineno} {fn.name}: from {node.module}")
    assert not local, "function-local imports of medclip_nb modules:\n" + "\n".join(local)


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    done = subprocess.run([ruff, "check", "medclip_nb", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_architecture_document_lists_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\s+([\w/]+\.py)\b", text, flags=re.M))
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
              if p.name not in ("__init__.py", "__main__.py")}
    assert not actual - listed, f"modules missing from docs/architecture.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/architecture.md lists modules that do not exist: {sorted(listed - actual)}"
