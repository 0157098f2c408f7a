"""Style checked by a test: bans in core/ and the dependency direction of DESIGN.md §1."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["core", "events", "projections", "replay", "ops"]
# what each layer may import of ours (DESIGN.md §1)
ALLOWED = {
    "core": {"core"},
    "events": {"core", "events"},
    "projections": {"core", "events", "projections"},
    "replay": {"core", "events", "projections", "replay"},
    "ops": set(LAYERS),
}
# no clock, randomness, I/O, threads or environment in the pure core
BANNED_IN_CORE = {"time", "datetime", "random", "secrets", "uuid", "os", "sys", "io", "pathlib", "socket",
                  "threading", "asyncio", "subprocess", "signal", "shutil", "tempfile", "logging", "structlog",
                  "kafka", "rocksdict", "decimal", "math", "statistics", "numpy"}  # fmt: skip
BANNED_CALLS_IN_CORE = {"float", "open", "print", "input", "hash", "id"}


def python_files(layer):
    return sorted((ROOT / layer).rglob("*.py"))


def imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("layer", LAYERS)
def test_dependency_direction(layer):
    problems = []
    for path in python_files(layer):
        for line, module in imported_modules(ast.parse(path.read_text())):
            parts = module.split(".")
            if parts[0] == "ringfence" and len(parts) > 1 and parts[1] not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if parts[0] in LAYERS:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} (use ringfence.{module})")
    assert not problems, "\n".join(problems)


def test_core_is_pure():
    problems = []
    files = python_files("core")
    assert len(files) >= 8  # the test must look at something
    for path in files:
        tree = ast.parse(path.read_text())
        where = path.relative_to(ROOT)
        for line, module in imported_modules(tree):
            if module.split(".")[0] in BANNED_IN_CORE:
                problems.append(f"{where}:{line} imports {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                problems.append(f"{where}:{node.lineno} float literal {node.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS_IN_CORE:
                problems.append(f"{where}:{node.lineno} calls {node.func.id}()")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                problems.append(f"{where}:{node.lineno} true division (/) makes a float; name the rounding")
            if isinstance(node, ast.Assert):
                problems.append(f"{where}:{node.lineno} assert vanishes under -O; use check()")
    assert not problems, "\n".join(problems)


def test_tidy_catches_a_float(tmp_path, monkeypatch):
    """The check above can fail: a planted float is found."""
    bad = ast.parse("x = 0.5\ny = a / b\n")
    floats = [n for n in ast.walk(bad) if isinstance(n, ast.Constant) and isinstance(n.value, float)]
    divisions = [n for n in ast.walk(bad) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)]
    assert floats and divisions
