"""Every benchmark script still imports against today's package (a renamed API breaks it at import time)."""

import pytest

from .conftest import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports_and_has_main(name):
    module = load_benchmark(name)
    if name != "reactive":  # the shared data helpers, not a script
        assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
