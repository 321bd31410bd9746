"""Guard rails of the package layout (docs/architecture.md): stage folders and a few named
cross-cutting modules, short functions, modules of one job, seams with public names (no private
name imported across modules, one import rule per package, facades that export what others
use), no import cycles, ruff clean, and an architecture document that lists every module."""

from __future__ import annotations

import ast
import json
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
# The only modules at the package root: cross-cutting ones every stage may use, and the CLI (cli, and
# cli_bench: its benchmark subcommands).
ROOT_MODULES = {"__init__", "__main__", "cli", "cli_bench", "config", "config_checks", "config_load", "errors", "files",
                "labels", "paths", "progress", "prompts", "runtime"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _packages() -> list[str]:
    """The stage folders: medclip_nb.<stage> with an __init__.py."""
    return sorted(f"medclip_nb.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and ".".join(parts[:2]) in _packages() else None


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _imports_from(tree: ast.AST):
    """(module, name, node) for every `from medclip_nb... import name` in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("medclip_nb"):
            for alias in node.names:
                yield node.module, alias.name, node


def _facade_names(package: str) -> dict[str, str]:
    """Names a package's facade offers -> the submodule that defines each: `from .sub import x`
    lines of an eager facade, or the `_PUBLIC` table of a lazy one."""
    tree = ast.parse((PACKAGE / package.split(".")[1] / "__init__.py").read_text())
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
            names.update({a.asname or a.name: node.module for a in node.names})
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_PUBLIC" for t in node.targets):
            names.update(ast.literal_eval(node.value))
    return names


def _all_of(package: str) -> list[str]:
    tree = ast.parse((PACKAGE / package.split(".")[1] / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            if isinstance(node.value, ast.Call):  # __all__ = sorted(_PUBLIC)
                return sorted(_facade_names(package))
            return list(ast.literal_eval(node.value))
    return []


# ---- size ---------------------------------------------------------------------------------------
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


def test_one_training_step_reads_in_one_body():
    """train_one_epoch names every phase of a step in order, in one function of the loop, and calls
    into no more of train/ than the step, the guard and the run's state (its Run)."""
    source = (PACKAGE / "train" / "loop.py").read_text()
    fn = next(f for f in _functions(ast.parse(source)) if f.name == "train_one_epoch")
    body = ast.get_source_segment(source, fn)
    phases = [body.index(f"# ---- {phase}") for phase in ("fetch", "move", "step", "guard", "log", "validate", "save")]
    assert phases == sorted(phases)
    assert fn.end_lineno - fn.lineno + 1 <= 90


# ---- layout and seams ---------------------------------------------------------------------------------
def test_every_module_is_in_a_stage_folder_or_named_cross_cutting():
    at_root = {p.stem for p in PACKAGE.glob("*.py")}
    assert at_root - ROOT_MODULES == set(), "modules at the package root that belong in a stage folder"
    nested = [p for p in PACKAGE.glob("*/*/*.py")]
    assert not nested, f"stage folders are one level deep: {nested}"


def test_no_private_name_is_imported_across_modules():
    leaks = []
    for name, path in _modules().items():
        for module, imported, node in _imports_from(ast.parse(path.read_text())):
            if imported.startswith("_") and module != name:
                leaks.append(f"{path.relative_to(ROOT)}:{node.lineno} from {module} import {imported}")
    assert not leaks, "private names imported from another module:\n" + "\n".join(leaks)


def test_each_package_has_one_import_rule():
    """Other packages (and the root modules) import a package through its facade only; a
    package's own modules import their siblings by submodule, never through their facade."""
    wrong = []
    for name, path in _modules().items():
        own = _package_of(name)
        for module, imported, node in _imports_from(ast.parse(path.read_text())):
            target = _package_of(module)
            where = f"{path.relative_to(ROOT)}:{node.lineno} from {module} import {imported}"
            if target is None or path.name == "__init__.py":
                continue
            if target != own and module != target:
                wrong.append(f"{where} (use the facade {target})")
            if target == own and module == target:
                wrong.append(f"{where} (inside {own}: import the submodule)")
    assert not wrong, "imports that break a package's import rule:\n" + "\n".join(wrong)


def _uses_outside(package: str) -> set[str]:
    """Names of `package`'s facade used by other packages, the root modules, the notebooks and
    the Makefile (`from medclip_nb.<stage> import x`, or `study.x` in a notebook)."""
    used = set()
    for name, path in _modules().items():
        if _package_of(name) != package:
            used |= {n for m, n, _ in _imports_from(ast.parse(path.read_text())) if m == package}
    short = package.split(".")[1]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [("".join(c["source"])) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        for source in code:
            used |= {n for m, n, _ in _imports_from(ast.parse(source)) if m == package}
        if any(re.search(rf"^from medclip_nb import .*\b{short}\b", s, flags=re.M) for s in code):
            used |= {n for s in code for n in re.findall(rf"\b{short}\.(\w+)", s)}
    for found in re.finditer(rf"from {re.escape(package)} import (\w+)", (ROOT / "Makefile").read_text()):
        used.add(found.group(1))
    return used


def test_facades_export_what_other_packages_use_and_no_more():
    extra = {}
    for package in _packages():
        exported = set(_all_of(package))
        assert exported == set(_facade_names(package)), f"{package}: __all__ differs from what the facade imports"
        unused = exported - _uses_outside(package)
        if unused:
            extra[package] = sorted(unused)
    assert not extra, f"facade names nobody outside the package uses: {extra}"


def _import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports anywhere in its body (function-local imports count:
    hiding a cycle inside a function is still a cycle). A name imported through a facade is an
    edge to the submodule that defines it, and facades themselves are left out."""
    modules = _modules()
    facades = {p: _facade_names(p) for p in _packages()}
    graph: dict[str, set[str]] = {m: set() for m, p in modules.items() if p.name != "__init__.py"}
    for name in graph:
        tree = ast.parse(modules[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in graph}
        for module, imported, _ in _imports_from(tree):
            if module in facades:
                target = facades[module].get(imported) or f"{module}.{imported}"
            else:
                target = f"{module}.{imported}" if f"{module}.{imported}" in modules else module
            if target in graph and target != name:
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


def test_the_package_has_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_through_a_facade_is_seen():
    graph = {"medclip_nb.a.x": {"medclip_nb.b.y"}, "medclip_nb.b.y": {"medclip_nb.a.x"}}
    assert _find_cycle(graph) == ["medclip_nb.a.x", "medclip_nb.b.y", "medclip_nb.a.x"]


# Sibling imports inside functions are allowed only for optional or heavy dependencies; the image
# store's builder is heavy (torch), and `prepare` imports MIMIC-CXR without torch unless asked for a store.
_LAZY_ALLOWED = re.compile(
    r"transformers|matplotlib|sklearn\.manifold|tensorboard|safetensors|IPython|ipywidgets|data\.store_build"
)
# cli.py imports a subcommand's stage when it runs, so `--help` and a bad flag answer at once
# without loading torch.
_LAZY_MODULES = {"medclip_nb.cli", "medclip_nb.cli_bench"}  # a stage is imported only when it runs


def test_sibling_imports_are_at_module_top():
    local = []
    for name, path in _modules().items():
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
