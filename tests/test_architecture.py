"""The layout of docs/architecture.md holds in the code: imports flow one way, and nobody imports private names."""

import ast
from pathlib import Path

import ldyn

SRC = Path(ldyn.__file__).parent
LAYERS = {"cli": 0, "paper": 1, "train": 2, "integrations": 2, "dynamics": 3}  # top to bottom; the rest is core


def layer(module: str) -> int:
    """cli 0, paper 1, train and integrations 2, dynamics 3, core 4 (the toys may use dynamics and the core)."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return LAYERS.get(name, 4)


def imports() -> list[tuple[str, str, list[str]]]:
    """(importing module, imported ldyn module, imported names) for every `from ldyn... import` in the package."""
    found = []
    for path in SRC.rglob("*.py"):
        module = "ldyn." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ldyn"):
                found.append((module, node.module, [a.name for a in node.names]))
    return found


def test_imports_flow_from_the_cli_down_to_the_core():
    upward = [(a, b) for a, b, _ in imports() if layer(b) < layer(a) and not a.startswith("ldyn.toys")]
    assert upward == []
    toys = [(a, b) for a, b, _ in imports() if a.startswith("ldyn.toys") and layer(b) < LAYERS["dynamics"]]
    assert toys == []


def test_no_module_imports_another_modules_private_names():
    private = [(a, b, n) for a, b, names in imports() for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_public_api_resolves():
    for name in ldyn.__all__:
        assert getattr(ldyn, name) is not None
