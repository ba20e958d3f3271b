"""Benchmark scripts imported as modules (they import their siblings, so ``benchmarks/`` goes on the path)."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_run(name: str, out: Path, *flags: str) -> None:
    """Run ``benchmarks/<name>.py --smoke --out out [flags]`` in its own process; fail with its stderr's tail."""
    script = BENCHMARKS / f"{name}.py"
    run = subprocess.run([sys.executable, str(script), "--smoke", *flags, "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=BENCHMARKS)
    assert run.returncode == 0, run.stderr[-3000:]
