"""The layout of docs/architecture.md holds in the code: imports flow one way, no import circle (function-level
imports included), and nobody imports private names."""

import ast
from pathlib import Path

import ldyn

SRC = Path(ldyn.__file__).parent
# Top to bottom: a module imports from its own package and from lower layers only; two packages on one layer never
# import each other. The top-level modules (config, schema, losses, errors, cli) are layers of their own.
LAYERS = [
    ["cli"],
    ["paper", "catalog"],
    ["train", "integrations", "toys"],
    ["runs", "generate"],
    ["dynamics", "rl"],
    ["logprobs", "models"],
    ["config"],
    ["data", "losses"],
    ["schema", "runtime"],
    ["errors"],
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
TOYS_MAY_USE = LAYER["dynamics"]  # the toys use the instruments and what lies below them, nothing that trains


def group(module: str) -> str:
    """The package (or top-level module) a module belongs to: ldyn.runs.figures -> runs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    return "ldyn." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported ldyn module, imported names) for every import of ldyn in the package, at the
    top or inside a function; `from ldyn.x import y` where y is a module counts as an import of ldyn.x.y."""
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    found = []
    for path in SRC.rglob("*.py"):
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ldyn"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.append((here, sub, []) if sub in modules else (here, node.module, [a.name]))
            elif isinstance(node, ast.Import):
                found += [(here, a.name, []) for a in node.names if a.name.startswith("ldyn")]
    return found


def test_every_package_has_a_layer():
    groups = {group(module_name(p)) for p in SRC.rglob("*.py")} - {"__init__", "recipes"}
    assert groups <= set(LAYER), groups - set(LAYER)


def test_imports_flow_from_the_cli_down_to_the_errors():
    wrong = []
    for a, b, _ in imports():
        ga, gb = group(a), group(b)
        if ga == gb or ga == "__init__" or gb == "__init__" and b == "ldyn":
            continue
        if LAYER[gb] <= LAYER[ga] or (ga == "toys" and LAYER[gb] < TOYS_MAY_USE):
            wrong.append((a, b))
    assert wrong == []


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for a, b, _ in imports():
        graph.setdefault(a, set()).add(b)
    done, path, circles = set(), [], []

    def visit(m):
        if m in path:
            circles.append(path[path.index(m) :] + [m])
            return
        if m in done:
            return
        path.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert circles == []


def test_no_module_imports_another_modules_private_names():
    private = [(a, b, n) for a, b, names in imports() for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_public_api_resolves():
    for name in ldyn.__all__:
        assert getattr(ldyn, name) is not None
