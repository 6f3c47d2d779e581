"""The package's architecture: layered imports without cycles, a demo wing nothing imports, no yaml schema.

Every import is read from the source (module level and inside functions), so a
lazy import cannot hide an upward dependency or a cycle.
"""

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

import lap_speechbrain

PACKAGE_ROOT = Path(lap_speechbrain.__file__).parent

# Lower layers never import higher ones; a layer may import its own members
# as long as the graph stays acyclic. The demo sits beside the stack: it may
# use anything, and nothing uses it.
LAYERS = {
    "fileio": 0,
    "known_warnings": 0,
    "data": 1,
    "lobes": 1,
    "nnet": 1,
    "augment": 1,
    "training": 2,
    "scoring": 2,
    "inference": 3,
    "export": 4,
    "integrations": 5,
    "cli": 5,
}
DEMO = "demo"


def component(module: str) -> str:
    """``lap_speechbrain.scoring.qmf`` -> ``scoring``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    """Dotted module name of a file of the package."""
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Set[str]:
    """Every ``lap_speechbrain`` module a file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "lap_speechbrain"}


def component_graph() -> Dict[str, Set[str]]:
    """Component -> the other components it imports."""
    graph: Dict[str, Set[str]] = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        source = component(module_name(path))
        if not source:
            continue
        targets = {component(name) for name in imported_modules(path)} - {source, ""}
        graph.setdefault(source, set()).update(targets)
    return graph


def test_every_component_has_a_layer():
    unknown = sorted(set(component_graph()) - set(LAYERS) - {DEMO})
    assert not unknown, f"components without a layer in this test: {unknown}"


def test_no_component_imports_a_higher_layer_or_the_demo():
    violations = []
    for source, targets in component_graph().items():
        if source == DEMO:
            continue
        for target in targets:
            if target == DEMO or LAYERS.get(target, -1) > LAYERS[source]:
                violations.append(f"{source} -> {target}")
    assert not violations, f"imports against the layering: {sorted(violations)}"


def test_component_graph_has_no_cycle():
    graph = component_graph()
    state: Dict[str, str] = {}

    def visit(node: str, trail: list) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                pytest.fail(f"import cycle: {' -> '.join(trail + [node, target])}")
            if target not in state:
                visit(target, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_layering_check_sees_lazy_imports(tmp_path):
    """The checker reads imports inside functions too (what a lazy upward import looks like)."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from lap_speechbrain.export.folder import export_model\n")
    assert imported_modules(module) == {"lap_speechbrain.export.folder"}


def test_library_does_not_read_the_yaml_schema():
    """Library functions take explicit arguments: no module indexes an hparams mapping."""
    offenders = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{number}"
        for path in PACKAGE_ROOT.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "hparams[" in line
    ]
    assert not offenders, f"yaml keys read inside the library: {offenders}"
