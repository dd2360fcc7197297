"""The package's layering (docs/architecture.md): no import cycle, no import of a layer above.

Every import counts, function-local and TYPE_CHECKING ones included: a lazy import is still a
dependency, and a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "mobilellm_export"

# Bottom to top. A module may import its own layer (without a cycle) and any layer below.
LAYERS = [
    {"errors", "sandbox", "signals", "memory", "console", "config", "presets", "model", "nn_utils", "metrics", "sampling",
     "bundle"},
    {"text"},
    {"checkpoints"},
    {"quant"},
    {"runtimes"},
    {"backends"},
    {"verify"},
    {"pipeline", "float_chat", "run_bundle", "describe"},
    {"cli", "cli_flags"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
TARGET_NAMES = ("android", "ios", "onnx")


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from pkg import name` of a submodule counts as
    that submodule)."""
    edges: dict[str, set[str]] = {}
    for mod, p in mods.items():
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out = edges.setdefault(mod, set())
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.split(".")[0] == "mobilellm_export"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                if base.split(".")[0] != "mobilellm_export":
                    continue
                for a in node.names:
                    out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        out.discard(mod)
    return edges


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    missing = sorted({layer(m) for m in modules()} - set(RANK) - {"__init__"})
    assert not missing, f"modules outside LAYERS (add them to a layer): {missing}"


def test_no_upward_import():
    mods = modules()
    bad = [f"{m} -> {t}" for m, ts in imports(mods).items() for t in ts
           if layer(m) != "__init__" and layer(t) != "__init__" and RANK[layer(t)] > RANK[layer(m)]]
    assert not bad, "imports of a higher layer:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    edges = imports(modules())
    # Tarjan-free: a DFS with colours finds a back edge, and the path to it is the cycle.
    colour, stack, cycles = {}, [], []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if colour.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t in edges and t not in colour:
                visit(t)
        stack.pop()
        colour[m] = 2

    for m in sorted(edges):
        if m not in colour:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


RUNTIME_PACKAGES = ("executorch", "coremltools", "onnx", "onnxruntime", "onnxruntime_genai", "onnxscript")


def test_runtime_packages_are_imported_only_by_backends_and_runtimes():
    """A runtime's own package (its exporter or its runner) is backends/' or runtimes/' business."""
    bad = []
    for mod, p in modules().items():
        if layer(mod) in ("backends", "runtimes"):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{mod}: {n}" for n in names if n.split(".")[0] in RUNTIME_PACKAGES]
    assert not bad, "\n".join(bad)


def test_target_names_live_in_backends():
    """`android`, `ios` and `onnx` are backend names: only backends/ (and the CLI's default) say them
    as a string, so recipes, verify and the pipeline stay target-agnostic."""
    pat = re.compile(r"""["'](%s)["']""" % "|".join(TARGET_NAMES))
    bad = []
    for mod, p in modules().items():
        if layer(mod) == "backends":
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if pat.search(line) and not (layer(mod) == "cli" and "default=" in line):
                bad.append(f"{p.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not bad, "target names outside backends/:\n" + "\n".join(bad)


def test_shipped_recipes_name_no_target():
    recipes = PKG.parent / "quant_recipes"
    bad = [f"{p.name}: {line.strip()}" for p in sorted(recipes.glob("*.toml"))
           for line in p.read_text(encoding="utf-8").splitlines()
           if not line.lstrip().startswith("#") and re.search(r"\b(%s)\b" % "|".join(TARGET_NAMES), line)]
    assert not bad, "\n".join(bad)
