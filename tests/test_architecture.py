"""The package's parts import one way: shared core < data, hub < models < evaluate < merge, train < demo < cli.

Every import statement in loramerge/ (also those inside functions: they are edges all the same) is read with
`ast`, mapped to the part it lives in, and checked against the parts that part may use. A violation names the
file, line and the offending import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "loramerge"
CORE = "core"  # the modules directly in loramerge/: PEFT format, atomic outputs, errors, hashing, schemas, parsing
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    "data": {CORE},
    "hub": {CORE},
    "models": {CORE, "hub"},
    "evaluate": {CORE, "data", "hub", "models"},
    "merge": {CORE, "hub", "data", "evaluate"},
    "train": {CORE, "hub", "data", "models", "evaluate"},
    "testing": {CORE, "train"},
    "demo": {CORE, "hub", "data", "models", "evaluate", "merge", "train"},
    "cli": {CORE, "hub", "data", "models", "evaluate", "merge", "train", "demo"},
}
FACADES = {PACKAGE / "__init__.py", PACKAGE / "__main__.py"}  # the public API and `python -m`: entry points, like the CLI


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return CORE


def imported_modules(path: Path) -> list[tuple[int, str]]:
    return imported_modules_of_text(path.read_text(encoding="utf-8"))


def is_module(dotted: str) -> bool:
    location = PACKAGE.parent / dotted.replace(".", "/")
    return location.with_suffix(".py").exists() or location.is_dir()


def imported_modules_of_text(text: str) -> list[tuple[int, str]]:
    """(line, module) for every loramerge module the source imports; `from pkg import name` counts as pkg.name
    when that is a module, else as pkg."""
    tree = ast.parse(text)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "loramerge"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "loramerge":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else node.module))
    return found


def library_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path not in FACADES)


def test_every_part_is_known() -> None:
    parts = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert parts == set(ALLOWED) - {CORE}


def test_imports_point_down_only() -> None:
    violations = []
    for path in library_files():
        part = part_of(module_name(path))
        for line, target in imported_modules(path):
            target_part = part_of(target)
            if target_part != part and target_part not in ALLOWED[part]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {target} ({target_part})")
    assert not violations, "\n".join(violations)


def test_no_import_cycles_between_modules() -> None:
    graph = {module_name(path): {t for _, t in imported_modules(path)} for path in library_files()}
    # a package's __init__ may re-export its own modules: that edge is not a dependency of the part
    graph = {m: {t for t in targets if t != m and not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]) if target in path else target)
            elif target in graph and state.get(target) is None:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation() -> None:
    """The check can fail: an upward import, even inside a function, is found and refused."""
    text = "def f():\n    from loramerge.cli.support import console\n"
    assert imported_modules_of_text(text) == [(2, "loramerge.cli.support")]
    assert part_of("loramerge.cli.support") == "cli" and "cli" not in ALLOWED["data"]


def test_every_part_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages (the recipes folder is mapped in): a new part must be added there."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    parts = {module_name(path) for path in PACKAGE.rglob("__init__.py")}
    assert parts | {"loramerge.shipped_recipes"} == listed


def function_local_imports(text: str) -> list[tuple[int, str]]:
    """(line, module) of every loramerge import made inside a function body."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in ast.walk(node):
                if isinstance(statement, ast.ImportFrom) and (statement.module or "").split(".")[0] == "loramerge":
                    found.append((statement.lineno, statement.module or ""))
                elif isinstance(statement, ast.Import):
                    found += [(statement.lineno, a.name) for a in statement.names if a.name.split(".")[0] == "loramerge"]
    return found


def test_only_the_command_line_defers_its_own_imports() -> None:
    """Library modules import the package at the top, so their dependencies read in one place; only cli/ defers
    them (to keep `loramerge --help` free of torch) and a package's __init__ may load its API on first use."""
    late = []
    for path in library_files():
        if part_of(module_name(path)) == "cli" or path.name == "__init__.py":
            continue
        late += [
            f"{path.relative_to(PACKAGE.parent)}:{line}: {module}" for line, module in function_local_imports(path.read_text())
        ]
    assert not late, "move these imports to the top of their module:\n" + "\n".join(late)
    assert function_local_imports("def f():\n    from loramerge.errors import LoramergeError\n") == [(2, "loramerge.errors")]
