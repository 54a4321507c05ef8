import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_bench(name: str):
    """benchmarks/<name>.py as a module (the scripts import each other by name, so benchmarks/ is on sys.path while
    it loads)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def frontier():
    return load_bench("frontier")


@pytest.fixture(scope="module")
def qa_table():
    return load_bench("qa_table")
