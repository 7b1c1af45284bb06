"""Say one thing once: shared constants are defined in one module, loggers come
from one factory. Two copies of a constant drift (ktpy once had the TUN MTU at
65000 in one module and 1500 in another), so this reads ktpy's source and
counts."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import ktpy

PACKAGE = Path(ktpy.__file__).parent


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        yield name, ast.parse(path.read_text(), filename=str(path))


def _assigned_names(tree: ast.Module) -> set[str]:
    """Names bound by a module-level assignment, plain or annotated."""
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def _defining_modules(name: str) -> list[str]:
    return [module for module, tree in _modules() if name in _assigned_names(tree)]


@pytest.mark.parametrize(
    "name",
    [
        "TUN_MTU",
        "IPNetwork",
        "IPAddress",
        "SERVICE_NAME_LABEL",
        "MODIFIABLE_KINDS",
        "WRITE_ATTEMPTS",
        "LOCK_PATH",
        "FIELD_MANAGER",
        "REASSERT_LIMIT",
    ],
)
def test_a_shared_constant_is_defined_in_one_module(name: str) -> None:
    assert len(_defining_modules(name)) == 1, _defining_modules(name)


def test_the_old_mtu_name_is_gone() -> None:
    assert _defining_modules("DEFAULT_MTU") == []


def _structlog_logger_calls(tree: ast.Module) -> Iterator[int]:
    """Lines that get a logger from structlog itself rather than ``ktpy.logs``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("structlog"):
            if any(alias.name == "get_logger" for alias in node.names):
                yield node.lineno
        elif isinstance(node, ast.Attribute) and node.attr == "get_logger":
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id == "structlog":
                yield node.lineno


def test_loggers_come_from_ktpy_logs_only() -> None:
    offenders = [
        f"{module}:{line}"
        for module, tree in _modules()
        if module != "ktpy.logs"
        for line in _structlog_logger_calls(tree)
    ]
    assert offenders == []


def test_the_logger_check_sees_a_direct_call() -> None:
    tree = ast.parse("import structlog\nlog = structlog.stdlib.get_logger(__name__)\n")
    assert list(_structlog_logger_calls(tree)) == [2]
