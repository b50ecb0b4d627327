"""The package layers, read from every import statement in the source (lazy ones inside functions too).

    sdk (cosa_sdk/, torch-free)  <-  training/  <-  export/  <-  demo (cosa_sdk/demo/)
    sdk                          <-  serving/
The `cosa` shell (cosa_sdk/cli.py) names its handlers by string and imports only the SDK.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "cosa_sdk": "cosa_sdk",
    "training": "cosa_sdk.training",
    "export": "cosa_sdk.export",
    "serving": "cosa_sdk.serving",
}
ALLOWED = {
    "sdk": {"sdk"},
    "shell": {"sdk"},
    "training": {"sdk", "training"},
    "export": {"sdk", "training", "export"},
    "serving": {"sdk", "serving"},
    "demo": {"sdk", "training", "export", "demo"},
}


def layer_of(module: str) -> str | None:
    if module == "cosa_sdk.cli":
        return "shell"
    for prefix, layer in (
        ("cosa_sdk.training", "training"),
        ("cosa_sdk.export", "export"),
        ("cosa_sdk.serving", "serving"),
        ("cosa_sdk.demo", "demo"),
        ("cosa_sdk", "sdk"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def source_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imported_modules(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if layer_of(name) is not None}


MODULES = source_modules()


def test_the_layout_is_the_one_described() -> None:
    layers = {layer_of(name) for name in MODULES}
    assert layers == set(ALLOWED)
    assert "cosa_sdk.training.run_record" in MODULES and "cosa_sdk.demo.app" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_lower_layers(module: str) -> None:
    layer = layer_of(module)
    wrong = sorted(name for name in imported_modules(module, MODULES[module]) if layer_of(name) not in ALLOWED[layer])
    assert not wrong, f"{module} ({layer}) imports {wrong}; allowed layers: {sorted(ALLOWED[layer])}"


def test_no_cycle_between_layers() -> None:
    edges = {layer: set() for layer in ALLOWED}
    for module, path in MODULES.items():
        edges[layer_of(module)].update(layer_of(name) for name in imported_modules(module, path))
    for layer in edges:
        edges[layer].discard(layer)

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start])

    cyclic = sorted(layer for layer in edges if reaches(layer, layer))
    assert not cyclic, f"layers on an import cycle: {cyclic} ({edges})"


def test_a_rule_breach_is_seen(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cosa_sdk.export import export_bundle\n    from . import sibling\n")
    found = imported_modules("cosa_sdk.training.model.bad", bad)
    assert "cosa_sdk.export" in found and "cosa_sdk.training.model.sibling" in found
    assert layer_of("cosa_sdk.export") not in ALLOWED["training"]
