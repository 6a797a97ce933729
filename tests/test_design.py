"""DESIGN.md's module map against the real imports of geodetect/.

Every `import` / `from … import` of a geodetect module, at module level or inside a
function, is an edge from the importing module to the imported one, both named by their
top-level name under geodetect/ (`geodetect.data.scene` is `data`, `geodetect.plugin._dock`
is `plugin`, the package itself is `__init__`); imports inside one package are not edges.
The map's `imports` column must list exactly a module's edges, and the edges must have no
cycle: a lazy import inside a function still calls back into the module it names, so it
counts like any other (STYLE.md: a lower module never calls back into a higher one).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "geodetect"
DESIGN = ROOT / "DESIGN.md"
GROUPS = ("data", "plugin")  # packages under geodetect/ with a table of their own modules

# Cycles that exist today and are being removed elsewhere; each entry says by what. A cycle
# not listed here fails; an entry whose cycle is gone fails too, so that it gets deleted.
ALLOWED_CYCLES = {}


def _modules() -> dict[str, list[Path]]:
    """Top-level module name -> its files (a package: all of its .py files)."""
    out: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        out[rel.stem if len(rel.parts) == 1 else rel.parts[0]].append(path)
    return dict(out)


def _top(dotted: str) -> str | None:
    """`geodetect.x.y` -> `x`; `geodetect` -> `__init__`; anything else -> None."""
    parts = dotted.split(".")
    if parts[0] != "geodetect":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level geodetect module, line, lazy) of every geodetect import in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])  # ["geodetect", ...]
    lazy_lines = {
        n.lineno
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            # `from geodetect import geometry` imports a module; `… import __version__` does not
            names = [f"{base}.{a.name}" for a in node.names] if base == "geodetect" else [base]
        else:
            continue
        for name in names:
            top = _top(name)
            if top is not None and top != "__init__" and top not in _modules():
                top = "__init__"  # a name defined in geodetect/__init__.py
            if top is not None:
                found.append((top, node.lineno, node.lineno in lazy_lines))
    return found


def _edges() -> dict[str, dict[str, list[str]]]:
    """module -> imported module -> ["geodetect/x.py:12 (lazy)", …]."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, paths in _modules().items():
        edges[module]  # every module has a row, importing nothing or not
        for path in paths:
            for top, line, lazy in _imports(path):
                if top != module:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    edges[module][top].append(where + (" (in a function)" if lazy else ""))
    return edges


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _names(cell: str) -> list[str]:
    """`a`, b, `c` -> [a, b, c]; — (or empty) -> []."""
    cell = cell.strip()
    if cell in ("", "—", "-"):
        return []
    return [n.strip().strip("`").strip() for n in cell.split(",")]


def _map_section() -> str:
    text = DESIGN.read_text()
    match = re.search(r"^## Module map\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "DESIGN.md has no '## Module map' section"
    return match.group(1)


def _map() -> dict[str, list[str]]:
    """The main table: module -> its `imports` cell."""
    rows: dict[str, list[str]] = {}
    lines = _map_section().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| module |"))
    columns = _cells(lines[header])
    assert "imports" in columns, "DESIGN.md module map: the table needs an `imports` column"
    col = columns.index("imports")
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        name = cells[0].strip("`")
        assert name not in rows, f"DESIGN.md module map: two rows for `{name}`"
        rows[name] = _names(cells[col])
    return rows


def _group_tables() -> dict[str, set[str]]:
    """For each `### <group>/` table under the map: the module names its first column holds."""
    out: dict[str, set[str]] = {}
    section = _map_section()
    for match in re.finditer(r"^### (\w+)/.*\n((?:.*\n)*?)(?=^#|\Z)", section, re.M):
        names = set()
        for line in match.group(2).splitlines():
            if line.startswith("|") and not set(line) <= set("|- "):
                names |= set(re.findall(r"`(\w+)`", _cells(line)[0]))
        out[match.group(1)] = names
    return out


def test_every_module_has_a_row_and_every_row_a_module():
    modules, rows = _modules(), _map()
    missing = [
        f"add a row for `{m}` ({modules[m][0].relative_to(ROOT)}), imports: "
        + (", ".join(sorted(_edges()[m])) or "—")
        for m in sorted(set(modules) - set(rows))
    ]
    stale = [
        f"remove row `{r}`: there is no geodetect/{r}.py or geodetect/{r}/"
        for r in rows
        if r not in modules
    ]
    assert not missing + stale, "DESIGN.md module map:\n" + "\n".join(missing + stale)


def test_rows_list_modules_that_exist():
    modules = _modules()
    bad = [
        f"row `{r}`: `{n}` in its imports is not a module under geodetect/"
        for r, names in _map().items()
        for n in names
        if n not in modules
    ]
    assert not bad, "DESIGN.md module map:\n" + "\n".join(bad)


def test_imports_match_the_map():
    rows, problems = _map(), []
    for module, imported in sorted(_edges().items()):
        if module not in rows:
            continue  # reported by test_every_module_has_a_row_and_every_row_a_module
        allowed = set(rows[module])
        for target in sorted(set(imported) - allowed):
            problems.append(
                f"row `{module}`: add `{target}` to its imports, or remove the import at "
                + ", ".join(imported[target])
            )
        for target in sorted(allowed - set(imported) - {module}):
            problems.append(f"row `{module}`: remove `{target}`, {module} never imports it")
    assert not problems, "DESIGN.md module map:\n" + "\n".join(problems)


def test_group_tables_list_every_module_of_their_package():
    tables, problems = _group_tables(), []
    for group in GROUPS:
        files = {p.stem for p in (PACKAGE / group).glob("*.py")} - {"__init__"}
        listed = tables.get(group)
        if listed is None:
            problems.append(f"no `### {group}/` table listing {sorted(files)}")
            continue
        problems += [f"### {group}/ table: add a row for `{m}`" for m in sorted(files - listed)]
        problems += [
            f"### {group}/ table: remove `{m}`, there is no geodetect/{group}/{m}.py"
            for m in sorted(listed - files)
        ]
    assert not problems, "DESIGN.md module map:\n" + "\n".join(problems)


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_finds_cycles():
    edges = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}, "e": {}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": []}, "b": {}}) == []


def test_no_import_cycle():
    edges = _edges()
    cycles = _cycles(edges)
    problems = []
    for component in cycles:
        if frozenset(component) in ALLOWED_CYCLES:
            continue
        inside = [
            f"  {a} -> {b}: " + ", ".join(where)
            for a in component
            for b, where in sorted(edges[a].items())
            if b in component
        ]
        problems.append(f"cycle among {', '.join(component)}:\n" + "\n".join(inside))
    problems += [
        f"{' <-> '.join(sorted(c))} no longer import each other ({why}): delete its "
        "ALLOWED_CYCLES entry in tests/test_design.py"
        for c, why in ALLOWED_CYCLES.items()
        if sorted(c) not in cycles
    ]
    assert not problems, "\n".join(problems)
