"""The engine's house: a shared core, one wing per model family. A wing imports the core and
itself, never another wing; the core imports no wing. Fails when an import crosses that line,
including function-local imports (every import statement is read)."""
import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "pnp_injection"
WINGS = sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def imported_packages(path: Path) -> set[str]:
    """The engine sub-packages (wings) that a module imports, resolved from relative imports."""
    here = path.relative_to(ENGINE).parts[:-1]  # () for the core, ("unet",) in a wing
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = node.module.split(".") if node.module else []
                if "pnp_injection" in parts:
                    rest = parts[parts.index("pnp_injection") + 1:]
                    found.update(rest[:1] if rest else [a.name for a in node.names])
                continue
            base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # `from . import x` / `from .. import x`: the names are the modules
                found.update(a.name for a in node.names)
    return {name for name in found if name in WINGS}


def test_there_are_two_wings():
    assert {"unet", "flow"} <= set(WINGS), WINGS


def test_no_wing_imports_another_and_the_core_imports_none():
    crossings = []
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ENGINE)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for wing in imported_packages(path):
            if wing != own:
                crossings.append(f"{rel} imports the {wing} wing")
    assert not crossings, crossings


def test_the_checker_sees_a_crossing():
    """The parser above must catch both spellings of a crossing, or the test proves nothing."""
    fake = ENGINE / "unet" / "_probe_crossing.py"
    fake.write_text("from ..flow import layers\nfrom ..flow.bank import FeatureBank\n")
    try:
        assert imported_packages(fake) == {"flow"}
    finally:
        fake.unlink()


def test_imports_stand_at_the_top():
    """Imports go at the top of each engine and node module, as in ComfyUI core: none inside a
    function, where it would run on every call."""
    local = []
    for root in (ENGINE, ENGINE.parent / "nodes"):
        for path in sorted(root.rglob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    local += [f"{path.name}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not local, local
