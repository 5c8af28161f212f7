"""The organism contract (docs/organisms.md), checked from the source beside import-linter: every
module under `icl_lab/organisms/` is listed, and no core module imports one of them, at module
level or inside a function, by `import`, `from ... import` or a string given to `import_module`."""

import ast
from pathlib import Path

import icl_lab

SRC = Path(icl_lab.__file__).parent
CORE = ("data", "model", "train", "run", "measure", "intervene", "pipeline", "report", "kinds.py", "io.py", "errors.py", "_config.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports (relative imports resolved), plus string literals passed to `import_module`."""
    tree, here = ast.parse(path.read_text()), module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            names |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return names


def organism_modules() -> set[str]:
    return {module_name(p) for p in (SRC / "organisms").rglob("*.py")}


def core_files() -> list[Path]:
    return [p for entry in CORE for p in ([SRC / entry] if entry.endswith(".py") else sorted((SRC / entry).rglob("*.py")))]


def test_every_organism_module_is_listed():
    modules = organism_modules()
    assert {"icl_lab.organisms.oocr.task", "icl_lab.organisms.grokking.task"} <= modules
    assert all(m.startswith("icl_lab.organisms") for m in modules)


def test_no_core_module_imports_an_organism():
    organisms = organism_modules()
    bad = {module_name(p): sorted(n for n in imported(p) if n in organisms or n.startswith("icl_lab.organisms"))
           for p in core_files()}
    assert not {k: v for k, v in bad.items() if v}, "core modules import organisms (docs/organisms.md)"


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    fake = SRC / "data" / "_boundary_probe.py"  # never written: parse a string through the same walker
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "def f():\n    from ..organisms.oocr import task\n")
    assert "icl_lab.organisms.oocr" in imported(fake)
