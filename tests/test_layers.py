"""Layers without cycles: no import cycle among cnnlab's modules, counting imports inside functions.

Every module of the package is parsed with ``ast`` (nothing is imported), and every
``import`` / ``from ... import`` at any depth (top level, functions, ``try`` blocks,
``if TYPE_CHECKING`` excepted) becomes an edge to the cnnlab module it names: absolute
(``import cnnlab.data``, ``from cnnlab.data import x``), package-relative (``from . import x``,
``from ..registry import y``) and ``from cnnlab import x`` (an edge to ``cnnlab.x`` when that is
a module, else to the package ``cnnlab``). A cycle fails the test and is printed.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Import nodes at any depth, skipping ``if TYPE_CHECKING:`` bodies (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The cnnlab module an import of ``target`` runs (its deepest existing prefix)."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # from X import y: y may be a submodule (an edge to X.y) or a name in X (an edge to X)
                targets = [f"{prefix}.{a.name}" for a in node.names] or [prefix]
            for t in targets:
                if t.split(".")[0] != "cnnlab":
                    continue
                found = _resolve(t, modules)
                if found and found != name:
                    graph[name].add(found)
                    # importing a.b.c runs a/__init__ and a/b/__init__ first
                    parent = found.rpartition(".")[0]
                    while parent and parent != name and not name.startswith(parent + "."):
                        graph[name].add(parent)
                        parent = parent.rpartition(".")[0]
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle path."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, sorted(c)) for c in sccs]


def _cycle_path(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle through the component's first module: a -> b -> ... -> a."""
    members, start = set(comp), comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first within the component back to start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return comp


def test_the_parser_sees_imports_at_any_depth_and_relative_ones():
    tree = ast.parse("def f():\n    from . import x\n    if True:\n        import cnnlab.y\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cnnlab.z\n")
    nodes = list(_imports(tree))
    assert len(nodes) == 3 and not any(getattr(n, "names", [None])[0].name == "cnnlab.z" for n in nodes)


def test_find_cycles_reports_a_ring():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_cnnlab():
    graph = import_graph()
    assert "cnnlab.config.schema" in graph and len(graph) > 10
    cycles = find_cycles(graph)
    text = "\n".join(" -> ".join(c) for c in cycles)
    print(text)
    assert not cycles, f"import cycles among cnnlab modules:\n{text}"


# The folders are the layers: a package may import the packages it is allowed here (and its own
# modules, and the bottom layer), never those above it. The bottom layer imports only itself.
BOTTOM = {"cnnlab.errors", "cnnlab.version", "cnnlab.registry", "cnnlab.outputs", "cnnlab.runs", "cnnlab.config.schema"}
MAY_IMPORT = {
    "data": {"config"},
    "models": {"data", "config"},
    "training": {"config", "data", "models"},
    "reporting": {"config", "sweeps.plan"},  # the claims and study pages read a sweep file's plan
    "inference": {"config", "data", "models", "training"},
    "sweeps": {"config", "data", "models", "training", "reporting", "lifecycle"},
    "lifecycle": {"config", "training", "reporting", "inference"},  # inference: the report's Grad-CAM of mistakes
}


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "cnnlab"


def _allowed(target: str, allowed: set[str]) -> bool:
    rest = target.split(".", 1)[1] if "." in target else ""
    # importing a.b runs the package a's __init__ (a docstring) first: a is allowed with a.b
    return any(rest == a or rest.startswith(a + ".") or a.startswith(rest + ".") for a in allowed)


def test_the_packages_import_only_the_layers_below_them():
    graph, wrong = import_graph(), []
    for m, targets in graph.items():
        if m in BOTTOM:
            wrong += [f"{m} -> {t}" for t in targets if t not in BOTTOM]
            continue
        pkg = _package(m)
        if pkg not in MAY_IMPORT:
            continue  # the top: api, cli, catalog and the package itself
        for t in targets:
            if t in BOTTOM or _package(t) == pkg or _allowed(t, MAY_IMPORT[pkg]):
                continue
            if pkg == "config" or (_package(t) == "config" and t.startswith("cnnlab.config.")):
                continue
            wrong.append(f"{m} -> {t}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_config_schema_reaches_no_data_model_or_training_code():
    reachable, todo = set(), ["cnnlab.config.schema"]
    graph = import_graph()
    while todo:
        m = todo.pop()
        for n in graph[m] - reachable:
            reachable.add(n)
            todo.append(n)
    banned = {m for m in reachable if _package(m) in ("data", "models", "training", "sweeps", "reporting", "inference")}
    assert not banned, f"cnnlab.config.schema reaches {sorted(banned)}"


def test_the_top_of_the_package_stays_small():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 10, f"{len(top)} modules at the top of cnnlab/ ({', '.join(top)}): give the new one its subpackage"


def test_no_function_takes_more_than_ten_parameters():
    # State travels in one object (train.TrainState), not in long argument lists.
    too_long = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                n -= bool(a.args and a.args[0].arg in ("self", "cls"))
                if n > 10:
                    too_long.append(f"{name}.{node.name} ({n} parameters, line {node.lineno})")
    assert not too_long, "functions over 10 parameters: " + ", ".join(too_long)


def test_no_function_is_over_eighty_lines():
    # A body that long holds several rules: give each its own function.
    too_long = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # from the def (not its decorators) to its last line
                if lines > 80:
                    too_long.append(f"{name}.{node.name} ({lines} lines, line {node.lineno})")
    assert not too_long, "functions over 80 lines: " + ", ".join(too_long)


def test_the_training_loop_fits_in_one_sitting():
    lines = (PACKAGE / "training" / "loop.py").read_text().count("\n")
    assert lines <= 400, f"cnnlab/training/loop.py has {lines} lines; keep it at most 400 (move helpers to their module)"


def test_the_architecture_page_names_every_module():
    page = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and p.name not in page]
    missing += [p.name + "/" for p in sorted(PACKAGE.iterdir()) if p.is_dir() and not p.name.startswith("_")
                and p.name + "/" not in page]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"
