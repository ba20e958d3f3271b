"""The layers: the calculator and what it needs never import training or learning code."""

import ast
from pathlib import Path

import ase_mlipal

PACKAGE = Path(ase_mlipal.__file__).parent

#: What the ASE calculator stands on: models, graphs, kernels, posterior, calibration, plain helpers.
INFERENCE = {"calculator", "environment", "frames", "progress", "storage", "models", "uncertainty"}
#: What sits above: training and the learners.
ABOVE = {"training", "learning"}


def layer(module: str) -> str:
    """``models.graphs`` -> ``models``; a top-level module is its own layer."""
    return module.split(".")[0]


def imports_of(module: str) -> set[str]:
    """Package modules (dotted, under ``ase_mlipal``) that ``module`` imports anywhere, lazily too."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = PACKAGE.joinpath(*module.split("."), "__init__.py")
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found.update(".".join(base + [name]) for name in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ase_mlipal."):
            found.add(node.module.removeprefix("ase_mlipal."))
    return found


def modules_in(layers: set[str]) -> list[str]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        if layer(module) in layers:
            out.append(module)
    return out


def test_nothing_below_the_learners_imports_training_or_learning():
    modules = modules_in(INFERENCE)
    assert {"calculator", "models.graphs", "uncertainty.posterior"} <= set(modules)
    for module in modules:
        leaks = {m for m in imports_of(module) if layer(m) in ABOVE}
        assert not leaks, f"{module} imports {sorted(leaks)}"


def test_the_walker_sees_relative_and_lazy_imports():
    # the check would pass vacuously if the walker missed imports inside functions or parent-relative ones
    assert "paths" in imports_of("cli")  # only inside functions (cmd_neb, cmd_learn)
    assert "training.finetune" in imports_of("learning.learning_run")
    assert "uncertainty.calibration" in imports_of("calculator")

