"""The layers: the calculator and what it needs never import training or learning code."""

import ast
from pathlib import Path

import ase_mlipal

PACKAGE = Path(ase_mlipal.__file__).parent

#: What the ASE calculator stands on: models, graphs, kernels, posterior, calibration.
INFERENCE = {"calculator", "calibration", "committee", "cumulant", "environment", "features", "frames", "inference",
             "kernels", "model", "ntk", "posterior", "progress", "sketch", "storage"}
#: Training and learning: fine-tuning, distillation, learners, the store, labelling, checks.
TRAINING_AND_LEARNING = {"training", "finetune", "prototypes", "distill", "retrain", "learner", "neb", "trigger",
                         "store", "labelling", "verification", "transition_state", "demo", "selection", "cli"}


def package_imports(module: str) -> set[str]:
    """Modules of the package that ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("ase_mlipal."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ase_mlipal."))
    return found


def closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen or not (PACKAGE / f"{module}.py").exists():
            continue
        seen.add(module)
        todo.extend(package_imports(module))
    return seen


def test_the_calculator_layer_imports_no_training_or_learning_module():
    reached = closure({"calculator"})
    assert reached <= INFERENCE, f"the calculator layer reaches {sorted(reached - INFERENCE)}"
    for module in INFERENCE:
        leaks = package_imports(module) & TRAINING_AND_LEARNING
        assert not leaks, f"{module}.py imports {sorted(leaks)}"


def test_the_walker_sees_a_lazy_import():
    # the check would pass vacuously if the walker missed imports inside functions
    assert "paths" in package_imports("transition_state") and "finetune" in package_imports("retrain")
