"""The package's shape: layers import downward only, no import cycles, Optuna's private
names only in the adapter, and the read-only `--leaderboard` path without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "benchmark"
# Bottom to top. Root modules (errors, files, schema, redaction) sit below every folder.
LAYERS = ("config", "data", "train", "tracking", "search", "report", "cli")
ADAPTER = "benchmark.search.optuna_internals"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """-1 for a root module, else the index of its folder (or of `cli`) in LAYERS."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    name = parts[1]
    return LAYERS.index(name) if name in LAYERS else -1


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at any depth of its code (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from benchmark.x import y`: y may be a module of x or a name in it
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "benchmark":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    return {module: imported_modules(path, known) - {module} for module, path in files.items()}


def test_every_folder_says_what_it_owns_and_may_import():
    for folder in [PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")]:
        init = folder / "__init__.py"
        assert init.exists(), f"{folder} is not a package"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and "import" in docstring.lower(), f"{init} should say what it owns and may import"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS) - {"cli"}


def test_layers_import_downward_only():
    upward = [f"{module} imports {target}" for module, targets in import_graph().items()
              for target in targets if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    # A package's __init__ importing its own modules is how a package works, not a cycle.
    graph = {module: {t for t in targets if not module.startswith(t + ".")}
             for module, targets in import_graph().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def private_optuna_uses(path: Path) -> list[str]:
    """Names of Optuna's private API used in `path`: `optuna.x._y` imports or module paths,
    and `._storage` of a study."""
    uses = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("optuna")]
        elif isinstance(node, ast.Attribute) and node.attr in {"_storage", "_get_trials", "_study_id"}:
            names = [f"<expr>.{node.attr}"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("optuna."):
            names = [node.value]
        else:
            continue
        uses += [f"{path.name}:{node.lineno}: {name}" for name in names
                 if any(part.startswith("_") for part in name.split(".")[1:])]
    return uses


def test_private_optuna_names_only_in_the_adapter(tmp_path):
    example = tmp_path / "example.py"
    example.write_text("from optuna.storages._heartbeat import x\nstudy._storage\nlog = 'optuna.study._optimize'\n")
    assert sorted({int(use.split(':')[1]) for use in private_optuna_uses(example)}) == [1, 2, 3]

    adapter = PACKAGE / Path(*ADAPTER.split(".")[1:]).with_suffix(".py")
    outside = [use for path in PACKAGE.rglob("*.py") if path != adapter for use in private_optuna_uses(path)]
    outside += [use for path in (PACKAGE.parent / "perf").rglob("*.py") for use in private_optuna_uses(path)]
    assert not outside, "\n".join(outside)


def test_leaderboard_does_not_import_torch(tmp_path):
    """`--leaderboard` reads a storage and writes every table and the report: it needs
    neither torch nor transformers."""
    from tests.test_leaderboard import _stored_final_evaluation

    storage = _stored_final_evaluation(tmp_path, [("bert", 0.5), ("roberta", 0.75)],
                                       [("bert", 0, 0, [0, 1, 0, 0]), ("roberta", 1, 0, [0, 1, 1, 0])])
    code = ("import sys\n"
            "from benchmark import cli\n"
            f"code = cli.main(['--leaderboard', '--storage', {storage!r}, '--results-dir', {str(tmp_path / 'out')!r}])\n"
            "heavy = sorted(name for name in ('torch', 'transformers') if name in sys.modules)\n"
            "print('exit', code, 'heavy', heavy)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert run.stdout.strip().splitlines()[-1] == "exit 0 heavy []", run.stdout + run.stderr
    assert (tmp_path / "out" / "leaderboard.csv").exists()
