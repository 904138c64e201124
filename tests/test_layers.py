"""The package's structure: no import cycle, layers that only point down, no hidden imports.

Layers (lowest first): utils and the shipped-network names -> data, networks (classifier, stylegan)
and the training infrastructure -> concept models -> metrics and interpretation -> report and apps
-> the command line. A module may import from its own layer or a lower one, never a higher one;
the import graph (imports inside functions included) has no cycle; imports of viscoin modules
sit at module level, where a reader sees them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import viscoin

ROOT = Path(viscoin.__file__).parent

LAYERS = {
    "viscoin": 0, "viscoin.utils": 0, "viscoin.pretrained": 0,
    "viscoin.data": 1, "viscoin.classifier": 1, "viscoin.stylegan": 1, "viscoin.training": 1,
    "viscoin.model": 2,
    "viscoin.metrics": 3, "viscoin.interpret": 3,
    "viscoin.report": 4, "viscoin.apps": 4,
    "viscoin.cli": 5, "viscoin.__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported dotted name refers to (the longest known prefix)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported viscoin module, line, at module level) of every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    # `if TYPE_CHECKING:` blocks at module level count as module level.
    for node in tree.body:
        if isinstance(node, ast.If):
            top_level.update(id(n) for n in node.body)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "viscoin" or name.startswith("viscoin."):
                target = resolve(name, known)
                if target is not None:
                    found.append((target, node.lineno, id(node) in top_level))
    return found


def layer(module: str) -> int:
    return LAYERS[resolve(module, LAYERS)]  # type: ignore[index]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _, _ in imports(p, known) if t != m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = [m for m in modules() if resolve(m, LAYERS) is None]
    assert not missing, f"modules outside every layer of LAYERS: {missing}"


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_cycle_detection_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_point_down():
    known = modules()
    wrong = []
    for m, path in known.items():
        for target, line, _ in imports(path, known):
            if layer(target) > layer(m):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {m} (layer {layer(m)}) imports {target} "
                             f"(layer {layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_viscoin_imports_at_module_level():
    known = modules()
    hidden = [f"{p.relative_to(ROOT.parent)}:{line}: {t}" for m, p in known.items()
              for t, line, top in imports(p, known) if not top]
    assert not hidden, "imports of viscoin modules inside functions (they hide the import graph):\n" + "\n".join(hidden)


def test_command_line_code_only_in_cli():
    offenders = [f"{module_name(p)}" for p in ROOT.rglob("*.py")
                 if "/cli/" not in p.as_posix() and p.name != "__main__.py"
                 and ("argparse" in p.read_text(encoding="utf-8"))]
    assert not offenders, f"argparse used outside viscoin.cli: {offenders}"


MODEL_PARTS = (".psi", ".theta", ".omega", ".f.", ".G.", "._synthesize", ".f(")


@pytest.mark.parametrize("package", ["metrics", "interpret", "report", "apps", "cli"])
def test_nothing_outside_the_model_reads_its_parts(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if any(f"model{part}" in code for part in MODEL_PARTS):
                bad.append(f"{path.relative_to(ROOT.parent)}:{i}: {line.strip()}")
    assert not bad, "use the concept-model contract (viscoin.model.contract) instead:\n" + "\n".join(bad)


def test_docstrings_cite_nothing_outside_the_repository():
    repo = ROOT.parent.parent
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in ("shared/docs", "method.md", "method page", "../shared"):
            if needle in text:
                bad.append(f"{path.relative_to(repo)}: {needle!r}")
        for doc in set(re.findall(r"docs/[\w.-]+\.md", text)):
            if not (repo / doc).is_file():
                bad.append(f"{path.relative_to(repo)}: cites {doc}, which is not in the repository")
    assert not bad, "\n".join(bad)
