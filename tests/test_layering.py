"""The package's layering, enforced: each module imports only from layers below its own (or from its own package at
its own layer), and no caspi import hides inside a function to dodge a cycle (the CLI alone imports lazily, so that
`caspi --help` does not load torch).

    errors → data, models → config → models.loading, scoring → audit, eval → train → report → testing → cli
    → __main__

Why config sits above models: a recipe is checked against its model family (language tags, the longest clip it
takes), and the family is the one place those facts live; data/ and models/ never read a recipe type (they take plain
arguments). `models.loading` rebuilds a model from a run's recipe, so it sits above config.
"""

import ast
from pathlib import Path

import pytest

import caspi

PACKAGE = Path(caspi.__file__).parent

# (module prefix, layer); the longest matching prefix decides. Imports go to a lower layer, or to the same package at
# the same layer (caspi.audit.scorers → caspi.audit.vad), never sideways to another package of the same layer.
LAYERS = {
    "caspi": 0,  # the root package: __version__ only
    "caspi.errors": 0,
    "caspi.folders": 0.5,  # output folders: imports only caspi.errors, so data, models and train share it
    "caspi.progress": 0.5,  # progress bars on a terminal, plain lines in logs: imports only caspi.errors
    "caspi.data": 1,
    "caspi.models": 1,
    "caspi.config": 2,
    "caspi.models.loading": 3,
    "caspi.scoring": 3,
    "caspi.longform": 3,  # long recordings: VAD chunking (caspi.data.vad), family.decode, seams; eval and audit use it
    "caspi.audit": 4,
    "caspi.eval": 4,
    "caspi.train": 5,
    "caspi.plan": 5.5,  # parameters, memory, steps and cost of a recipe: builds on train's rules, runs nothing
    "caspi.report": 6,  # reads what audit, eval and train write
    "caspi.doctor": 6.5,  # pre-flight checks: the machine, the credentials, the audit gate and the plan
    "caspi.testing": 7,
    "caspi.slurm": 7.2,  # `caspi slurm`: the sbatch script (runs doctor and plan, then the trainer) and its submission
    "caspi.slurm_cluster": 7.5,  # a one-node SLURM cluster for tests and benchmarks: stdlib and caspi.errors only
    "caspi.demo": 8,  # the Round-2 workflow: runs the commands the CLI passes it
    "caspi.cli": 9,
    "caspi.__main__": 10,  # `python -m caspi`: runs the CLI
}
LAZY_IMPORTS_ALLOWED = {"caspi.cli"}  # its commands import on use, so `caspi --help` stays fast


def layer_of(module: str) -> tuple[str, int]:
    """(the matching LAYERS prefix, its layer) of a dotted module name."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise KeyError(f"{module}: not in LAYERS; give it a layer in tests/test_layering.py")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def caspi_imports(source: str, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported caspi module, line, inside a function) for every import of a caspi module in `source`."""
    tree = ast.parse(source)
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module or ""
                # `from caspi.models import loading` imports the submodule caspi.models.loading.
                targets = [f"{stem}.{alias.name}" if _is_module(f"{stem}.{alias.name}") else stem
                           for alias in child.names]
            found.extend((t, child.lineno, in_function) for t in targets if t == "caspi" or t.startswith("caspi."))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    own_prefix, own_layer = layer_of(module)
    problems = []
    for target, line, in_function in caspi_imports(source, module, is_package):
        prefix, layer = layer_of(target)
        if in_function and module not in LAZY_IMPORTS_ALLOWED:
            problems.append(f"{module}:{line} imports {target} inside a function")
        same_package = prefix == own_prefix or (layer == own_layer and target.split(".")[:2] == module.split(".")[:2])
        if layer > own_layer or (layer == own_layer and not same_package):
            problems.append(f"{module}:{line} imports {target} (layer {layer}) from layer {own_layer}")
        if target.startswith("caspi.testing") and module != "caspi.testing":
            problems.append(f"{module}:{line} imports caspi.testing, which only tests and benchmarks may use")
    return problems


def all_modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_has_a_layer():
    for module, _ in all_modules():
        layer_of(module)


def test_imports_go_down_the_layers_and_none_hide_in_functions():
    problems = []
    for module, path in all_modules():
        problems += violations(module, path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module, source, expected", [
    ("caspi.data.cuts", "from caspi.models.families import get_family\n", "layer 1) from layer 1"),  # sideways
    ("caspi.models.families", "from caspi.config import Recipe\n", "layer 2) from layer 1"),  # upwards
    ("caspi.eval.evaluate", "from caspi.train.export import load_run\n", "layer 5) from layer 4"),
    ("caspi.eval.evaluate", "def f():\n    from caspi.scoring import score\n", "inside a function"),
    ("caspi.train.loop", "from caspi.testing import tiny_qwen\n", "only tests and benchmarks"),
    ("caspi.models.families", "from . import loading\n", "layer 3) from layer 1"),  # relative, to a submodule
])
def test_the_checker_finds_each_kind_of_violation(module, source, expected):
    assert any(expected in p for p in violations(module, source)), violations(module, source)


@pytest.mark.parametrize("module, source", [
    ("caspi.audit.scorers", "from caspi.audit.vad import vad_measures\nfrom caspi.models.loading import load_model\n"),
    ("caspi.models.loading", "from caspi.config import Recipe\nfrom caspi.models.families import get_family\n"),
    ("caspi.cli", "def cmd():\n    from caspi.train.loop import train\n"),
])
def test_the_checker_allows_downward_and_same_package_imports(module, source):
    assert violations(module, source) == []
