"""Lazy attributes for a package: its public names load on first use.

A package's `__init__.py` lists its public names as imports inside an
`if TYPE_CHECKING:` block (type checkers, editors and the docs read them there), then calls
`attach`. The first access to a name imports the module that defines it, so
`import jaxopt_tokens` and the command line's `--help` do not load JAX, and a command loads
only the modules it uses (the scientific Python ecosystem's lazy-loading convention, SPEC 1).
"""

from __future__ import annotations

import ast
import importlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["attach"]

# one first import at a time, across the package and its namespaces: threads that touch names
# at once would otherwise import JAX concurrently and see its modules half initialised
_FIRST_IMPORTS = threading.RLock()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def lazy_names(init_file: str | Path) -> dict[str, tuple[str, str | None]]:
    """`name -> (relative module, attribute or None for a submodule)` from the file's
    `if TYPE_CHECKING:` imports."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    table: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.ImportFrom) and stmt.level == 1):
                raise TypeError(f"{init_file}: only `from .x import y` belongs in the block")
            for alias in stmt.names:
                name = alias.asname or alias.name
                if stmt.module is None:  # `from . import sub`: a subpackage
                    table[name] = ("." + alias.name, None)
                else:
                    table[name] = ("." + stmt.module, alias.name)
    return table


def attach(
    package: str, init_file: str | Path
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package` (a package or a namespace module in one), whose
    lazy names are those `init_file` imports under `if TYPE_CHECKING:`."""
    table = lazy_names(init_file)
    # relative imports resolve against the package itself, or a module's parent package
    anchor = package if Path(init_file).name == "__init__.py" else package.rpartition(".")[0]
    lock = _FIRST_IMPORTS

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        with lock:
            namespace = vars(sys.modules[package])
            if name in namespace:  # another thread loaded it while this one waited
                return namespace[name]
            module_name, attribute = table[name]
            module = importlib.import_module(module_name, anchor)
            value = module if attribute is None else getattr(module, attribute)
            setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
            return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
