"""The package layout holds (docs/architecture.md): small modules, core and store at the bottom, HTTP at the edge.

Walks every module's imports with ast (function-level and ``TYPE_CHECKING`` imports included), so a failure names
the module and the import that breaks the rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fleetd"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 600

# The edge: the only modules that may import an HTTP framework or server, or fleetd.http.
HTTP_IMPORTS = ("litestar", "uvicorn", "fleetd.http")
EDGE = {
    "fleetd.app",
    "fleetd.cli.serve",
    "fleetd.accounts.audit_api",
    "fleetd.accounts.users_api",
    "fleetd.alerts.api",
    "fleetd.artifacts.api",
    "fleetd.ddi.api",
    "fleetd.ddi.routes",
    "fleetd.devices.admin_api",
    "fleetd.devices.certificates_api",
    "fleetd.devices.device_api",
    "fleetd.devices.enrollment_api",
    "fleetd.rollouts.api",
    "fleetd.telemetry.api",
    "fleetd.remote.api",
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = [src.name, *path.relative_to(src).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> list[str]:
    """Every module ``path`` imports, absolute; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            found += subs or [base]
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(src: Path = SRC, edge: set[str] = EDGE) -> list[str]:
    mods = modules(src)
    known = set(mods)
    root = src.name
    bad: list[str] = []
    top = [p.name for p in src.glob("*.py")]
    if len(top) > MAX_TOP_LEVEL_MODULES:
        bad.append(f"{len(top)} modules directly under {root}/ (at most {MAX_TOP_LEVEL_MODULES}): {sorted(top)}")
    for name, path in mods.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            bad.append(f"{name} has {lines} lines (at most {MAX_LINES}): split it")
        for target in imports(path, name, known):
            if _under(name, f"{root}.core") and _under(target, root) and target != root \
                    and not _under(target, f"{root}.core"):
                bad.append(f"{name} imports {target}: core/ imports no other fleetd package")
            if _under(name, f"{root}.store") and _under(target, root) and target != root \
                    and not _under(target, f"{root}.core") and not _under(target, f"{root}.store"):
                bad.append(f"{name} imports {target}: store/ imports only core/")
            http = [h for h in (*HTTP_IMPORTS[:2], f"{root}.http") if _under(target, h)]
            if http and name not in edge and not _under(name, f"{root}.http"):
                bad.append(f"{name} imports {target}: HTTP is imported only at the edge "
                           "(http/, the */api.py and */*_api.py modules, ddi/routes.py, app.py, cli/serve.py)")
    return bad


def test_the_layout_holds() -> None:
    assert len(modules()) > 50  # the walk found the package
    assert violations() == []


def test_every_package_is_in_the_architecture_doc() -> None:
    text = ARCHITECTURE.read_text()
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert len(packages) >= 10
    assert [p for p in packages if f"{p}/" not in text] == []


@pytest.mark.parametrize(("where", "line", "expected"), [
    ("devices/registry.py", "from litestar import Request",
     "fleetd.devices.registry imports litestar: HTTP is imported only at the edge"),
    ("devices/hub.py", "from ..http import rpc",
     "fleetd.devices.hub imports fleetd.http.rpc: HTTP is imported only at the edge"),
    ("core/names.py", "from ..store.database import Store",
     "fleetd.core.names imports fleetd.store.database: core/ imports no other fleetd package"),
    ("store/blobs.py", "    from ..devices import registry",
     "fleetd.store.blobs imports fleetd.devices.registry: store/ imports only core/"),
])
def test_the_walk_names_the_module_and_the_import(tmp_path: Path, where: str, line: str, expected: str) -> None:
    # A copy of the real tree with one forbidden import added (at module level, or inside a function).
    src = tmp_path / "fleetd"
    for path in modules().values():
        copy = src / path.relative_to(SRC)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    assert violations(src) == []
    target = src / where
    body = "def _late() -> None:\n" + line + "\n" if line.startswith("    ") else line + "\n"
    target.write_text(target.read_text() + "\n" + body)
    found = violations(src)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_walk_counts_lines_and_top_level_modules(tmp_path: Path) -> None:
    src = tmp_path / "fleetd"
    src.mkdir()
    for i in range(MAX_TOP_LEVEL_MODULES + 1):
        (src / f"m{i}.py").write_text("x = 1\n" * (MAX_LINES + 1 if i == 0 else 1))
    found = violations(src, set())
    assert any(v.startswith(f"{MAX_TOP_LEVEL_MODULES + 1} modules directly under fleetd/") for v in found), found
    assert "fleetd.m0 has 601 lines (at most 600): split it" in found


# --- where SQL lives ---------------------------------------------------------------------------------------------

# Text that is SQL: a statement, or a fragment of one that a query is assembled from.
SQL_TEXT = re.compile(r"\b(SELECT\b.+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                      r"WHERE\b|ORDER\s+BY|json_each|json_extract|julianday|\bGLOB\b|"
                      r"sqlite_(sequence|master|schema))", re.S)


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def sql_outside_storage(src: Path = SRC) -> dict[str, list[int]]:
    """Modules, other than ``*/storage.py`` and store/, with string constants that are SQL, and their lines."""
    found: dict[str, list[int]] = {}
    for name, path in modules(src).items():
        if name.endswith(".storage") or _under(name, f"{src.name}.store"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        lines = sorted({n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                        and id(n) not in docs and SQL_TEXT.search(n.value)})
        if lines:
            found[name] = lines
    return found


def test_sql_lives_in_storage_modules() -> None:
    assert len(modules()) > 50  # the walk found the package
    assert sql_outside_storage() == {}, "SQL belongs in the package's storage.py (docs/architecture.md)"


def test_the_sql_walk_finds_statements_and_fragments(tmp_path: Path) -> None:
    src = tmp_path / "fleetd"
    (src / "devices").mkdir(parents=True)
    (src / "devices" / "service.py").write_text(
        '"""Reads devices WHERE they are: a docstring is not SQL."""\n'
        'A = "SELECT id FROM devices"\n'
        'def f(k):\n'
        '    return f" AND json_extract(tags, {k}) = ?"\n'
        'B = "selected from the list"\n')
    (src / "devices" / "storage.py").write_text('Q = "SELECT id FROM devices WHERE id = ?"\n')
    assert sql_outside_storage(src) == {"fleetd.devices.service": [2, 4]}


# --- tests mirror the layout -------------------------------------------------------------------------------------

TESTS = ROOT / "tests"
# Folders of tests that are not about one package: whole-process and browser tests, the agent, the shim, shared
# helpers, the benchmark suite, the shared vectors.
TEST_FOLDERS_OF_THEIR_OWN = {"e2e", "ui", "bench", "agent", "rtos", "support", "vectors"}
# Tests about the whole tree or the composition directly under src/fleetd/, which stay in tests/.
CROSS_CUTTING = {"test_architecture.py", "test_closed_lists.py", "test_effects_boundary.py", "test_lifecycle.py",
                 "test_maintenance.py", "test_replicas.py", "test_vectors.py"}


def test_tests_mirror_the_packages() -> None:
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - packages - TEST_FOLDERS_OF_THEIR_OWN == set(), "a tests/ folder names no package of src/fleetd"
    assert {p.name for p in TESTS.glob("test_*.py")} - CROSS_CUTTING == set(), \
        "a package's tests go in tests/<package>/ (docs/architecture.md, 'Tests')"
