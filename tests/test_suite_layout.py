"""The test suite's own layout: shared helpers live in helper modules (harness.py, flux_harness.py,
workflow_runs.py, ...), and no test module imports another test module. Importing a test module runs
its module-level code and hands pytest its tests a second time under another name; a helper that
lives in a test module moves, or disappears, with that module's tests. Fails when any test_*.py
imports a test_* module (every import statement is read, function-local ones too)."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> set[str]:
    """The test_* modules that the code imports, by any spelling."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # `from test_x import y`, `from tests import test_x`, `from . import test_x`
            names = [node.module or ""] + [alias.name for alias in node.names]
        else:
            continue
        found.update(part for name in names for part in name.split(".") if part.startswith("test_"))
    return found


def test_no_test_module_imports_another():
    crossings = [f"{path.name} imports {module}" for path in sorted(TESTS.glob("test_*.py"))
                 for module in sorted(imported_test_modules(path.read_text()))]
    assert not crossings, "move the shared helpers into a helper module (harness.py, flux_harness.py, " \
                          f"workflow_runs.py): {crossings}"


def test_the_checker_sees_every_spelling():
    """The parser above must catch each way of importing a test module, or the test proves nothing."""
    spellings = {
        "from test_engine import plain_sample": {"test_engine"},
        "import test_flux_engine as flux_engine": {"test_flux_engine"},
        "import test_compile": {"test_compile"},
        "def f():\n    from test_graph import pnp_graph": {"test_graph"},
        "from . import test_workflows": {"test_workflows"},
        "from .test_bank_files import rewrite": {"test_bank_files"},
        "import tests.test_engine": {"test_engine"},
        "from tests.test_engine import Probe": {"test_engine"},
        "from tests import test_soak": {"test_soak"},
        "import harness\nfrom flux_harness import invert\nfrom workflow_runs import shrunk": set(),
    }
    for source, expected in spellings.items():
        assert imported_test_modules(source) == expected, source
