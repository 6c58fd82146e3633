"""The layout's rules, read from the source: no import cycles, nothing imports the doors, and the
direction models -> nets/losses/metrics/data holds (nets injected, never imported by models)."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
BENCHMARKS = REPO / "experiments" / "benchmarks"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports anywhere (inside functions too)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # "from pkg import mod" imports pkg.mod when that is a module, else pkg itself
            names = [base + f".{a.name}" * (f"{base}.{a.name}" in known) for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def graph(root: Path, files: list[Path]) -> dict[str, set[str]]:
    known = {module_name(f, root) for f in files}
    return {module_name(f, root): imports(f, root, known) for f in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


# package __init__ files that re-export their public names are not part of a cycle they close
def without_reexports(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    packages = {m for m in edges if (SRC / m.replace(".", "/") / "__init__.py").is_file()}
    return {m: {t for t in ts if t not in packages} for m, ts in edges.items()}


@pytest.fixture(scope="module")
def genlab_graph() -> dict[str, set[str]]:
    return graph(SRC, sorted(SRC.rglob("*.py")))


def test_no_module_of_genlab_imports_another_that_imports_it_back(genlab_graph):
    assert cycles(without_reexports(genlab_graph)) == []


def test_no_benchmark_module_imports_another_that_imports_it_back():
    files = sorted(BENCHMARKS.glob("*.py"))
    assert cycles(graph(BENCHMARKS, files)) == []


def test_only_the_doors_import_the_doors(genlab_graph):
    importers = {m for m, ts in genlab_graph.items() if any(t.startswith("genlab.cli") for t in ts)}
    assert {m for m in importers if not m.startswith("genlab.cli")} == set()


def test_models_import_no_network_and_no_callback(genlab_graph):
    """Networks are injected through the config; a LightningModule never imports a callback."""
    for module, targets in genlab_graph.items():
        if module.startswith("genlab.models"):
            wrong = {t for t in targets if t.startswith(("genlab.nets", "genlab.callbacks"))}
            # the VAE builds its VampPrior and its IAF posterior from its own arguments
            wrong -= {"genlab.nets.priors", "genlab.nets.iaf"}
            assert not wrong, f"{module} imports {wrong}"


ABOVE = ("genlab.cli", "genlab.training", "genlab.evaluation", "genlab.sampling",
         "genlab.preparation", "genlab.comparison", "genlab.models",
         "genlab.callbacks")  # fmt: skip
LOWER = ("genlab.nets", "genlab.losses", "genlab.augment", "genlab.metrics", "genlab.data",
         "genlab.config", "genlab.errors", "genlab.checkpoints")  # fmt: skip


def test_lower_layers_import_nothing_above_them(genlab_graph):
    for layer in LOWER:
        for module, targets in genlab_graph.items():
            if module == layer or module.startswith(f"{layer}."):
                wrong = {t for t in targets if t.startswith(ABOVE)}
                assert not wrong, f"{module} imports {wrong}"


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The rules above can fail: two modules that import each other are reported."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    (tmp_path / "c.py").write_text("import a\n")
    files = sorted(tmp_path.glob("*.py"))
    assert cycles(graph(tmp_path, files)) == [["a", "b"]]
