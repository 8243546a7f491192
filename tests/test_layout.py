"""The package's shape: layers import downward only, no import cycles, no module using
another's private names, Optuna's private names only in the adapter, and the read-only
`--leaderboard` path and the trackers without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import stored_final_evaluation

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


def imports_of_test_modules(path: Path) -> list[str]:
    """Where `path` imports a test module or conftest.py (at any depth of its code): a shared
    helper lives in tests/helpers.py, and a fixture of conftest.py is asked for by name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                 else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        found += [f"{path.name}:{node.lineno}: {name}" for name in names
                  if name.startswith(("tests.test_", "tests.conftest"))]
    return found


def test_no_test_module_imports_another(tmp_path):
    example = tmp_path / "test_example.py"
    example.write_text("from tests.test_study import write_config\nimport tests.conftest\n"
                       "def f():\n    from tests.test_cli import x\n"
                       "from tests.helpers import write_config\n")
    assert [use.split(": ")[1] for use in imports_of_test_modules(example)] == [
        "tests.test_study", "tests.conftest", "tests.test_cli"]

    tests = Path(__file__).resolve().parent
    found = [use for path in sorted(tests.glob("*.py")) for use in imports_of_test_modules(path)]
    assert not found, "\n".join(found)


def test_leaderboard_does_not_import_torch(tmp_path):
    """`--leaderboard` reads a storage and writes every table and the report: it needs
    neither torch nor transformers."""
    storage = stored_final_evaluation(tmp_path, [("bert", 0.5), ("roberta", 0.75)],
                                      [("bert", 0, 0, [0, 1, 0, 0]), ("roberta", 1, 0, [0, 1, 1, 0])])
    code = ("import sys\n"
            "from benchmark import cli\n"
            f"code = cli.main(['--leaderboard', '--storage', {storage!r}, '--results-dir', {str(tmp_path / 'out')!r}])\n"
            "heavy = sorted(name for name in ('torch', 'transformers') if name in sys.modules)\n"
            "print('exit', code, 'heavy', heavy)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert run.stdout.strip().splitlines()[-1] == "exit 0 heavy []", run.stdout + run.stderr
    assert (tmp_path / "out" / "leaderboard.csv").exists()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names_used(path: Path, module: str, known: set[str]) -> list[str]:
    """Where `path` (module `module`) uses a private name of another module of its package
    (`known`): `from pkg.x import _name`, or `x._name` on a package module it imported."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".")[0]
    modules: dict[str, str] = {}  # local name -> the package module it is bound to
    uses: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == package:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif is_private(alias.name) and node.module != module:
                    uses.append((node.lineno, f"from {node.module} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    # `import pkg.x.y` binds `pkg`; `import pkg.x.y as z` binds `z` to pkg.x.y.
                    modules[alias.asname or package] = alias.name if alias.asname else package
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in modules:
            owner = ".".join([modules[value.id], *reversed(chain)])
            if owner in known and owner != module:
                uses.append((node.lineno, f"{owner}.{node.attr}"))
    return [f"{path.name}:{line}: {use}" for line, use in sorted(uses)]


def test_private_names_used_finds_each_form(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("_hidden = 1\nshown = 2\n\ndef _helper():\n    return _hidden\n")
    (package / "b.py").write_text(
        "import pkg.a\nimport pkg.a as alias\nfrom pkg import a\nfrom pkg.a import _hidden, shown\n"
        "from pkg.a import __doc__\n\n"
        "x = pkg.a._helper()\ny = alias._hidden\nz = a._helper\nw = a.shown + a.__name__ + shown\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    assert [use.split(": ", 1)[1] for use in private_names_used(package / "b.py", "pkg.b", known)] == [
        "from pkg.a import _hidden", "pkg.a._helper", "pkg.a._hidden", "pkg.a._helper"]
    # A module's own private names, and public or dunder names of others, are not flagged.
    assert private_names_used(package / "a.py", "pkg.a", known) == []


def test_no_module_uses_another_modules_private_name():
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    uses = [f"{module}: {use}" for module, path in sorted(files.items())
            for use in private_names_used(path, module, set(files))]
    assert not uses, "\n".join(uses)


def test_trackers_import_of_train_only_its_records():
    """What the training loop hands the trackers lives in `train.records`: no tracking module
    imports another train module (the loop, and with it torch)."""
    imports = [f"{module} imports {target}" for module, targets in import_graph().items()
               if module.startswith("benchmark.tracking") for target in targets
               if target.startswith("benchmark.train") and target != "benchmark.train.records"]
    assert not imports, "\n".join(imports)


def test_records_and_trackers_load_neither_torch_nor_transformers():
    modules = ["benchmark.train.records", *sorted(module_name(path) for path in (PACKAGE / "tracking").glob("*.py"))]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=False)
    assert run.stdout.strip().splitlines()[-1:] == ["[]"], run.stdout + run.stderr


def public_definitions(path: Path) -> set[str]:
    """The public names `path` defines at its top level: functions, classes and assigned names."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return {name for name in names if not name.startswith("_")}


def test_each_public_name_is_defined_once():
    """A name means one thing across the package: two modules' `prepare` (a dataset's tables, a
    run's studies) or `duration_text` (two formats) read alike at every call and differ."""
    defined: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in public_definitions(path):
            defined.setdefault(name, []).append(module_name(path))
    twice = [f"{name}: {', '.join(modules)}" for name, modules in sorted(defined.items()) if len(modules) > 1]
    assert not twice, "\n".join(twice)
