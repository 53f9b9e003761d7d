"""Every public callable documents its arguments (an `Args:` section, or `Attributes:` for a
class's fields) and what it returns (`Returns:`), in the Google style the API pages render:
a parameter missing from its docstring is a parameter missing from its page. Read with griffe,
the parser mkdocstrings uses, so the check sees what the site shows."""

from __future__ import annotations

import enum
import inspect

import pytest

import jaxopt_tokens as jt

griffe = pytest.importorskip("griffe", reason="the docs extra is not installed")

# the top level and every public namespace in it (`jt.traffic`, `jt.clear`, ...)
NAMESPACES = {"": jt} | {
    f"{n}.": getattr(jt, n) for n in jt.__all__ if inspect.ismodule(getattr(jt, n))
}


def _public_callables():
    for prefix, ns in NAMESPACES.items():
        for name in ns.__all__:
            obj = getattr(ns, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            if inspect.isclass(obj) and issubclass(obj, (enum.Enum, BaseException, Warning)):
                continue  # an enum's members and an exception's message document them
            yield prefix + name, obj


PUBLIC = sorted(_public_callables(), key=lambda item: item[0])


@pytest.fixture(scope="module")
def package():
    return griffe.load("jaxopt_tokens", docstring_parser="google")


def _sections(obj) -> list:
    if obj is None or obj.docstring is None:
        return []
    return obj.docstring.parse("google")


def _names(sections, kinds) -> set[str]:
    out = set()
    for section in sections:
        if section.kind.value in kinds:
            for item in section.value:
                out.add(item.name.lstrip("*"))  # "a, b: ..." renders as "a," (and b is lost)
    return out


def _parameters(obj) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters if p not in ("self", "cls")]


def _returns_a_value(obj) -> bool:
    """Whether a function gives something back: a return annotation other than None, or
    else a `return <value>` in its own body (nested functions aside)."""
    import ast
    import textwrap

    annotation = inspect.signature(obj).return_annotation
    if annotation is not inspect.Signature.empty:
        return annotation not in (None, "None")
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj))))
    function = tree.body[0]
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return False


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_callable_documents_its_arguments_and_returns(package, name, obj):
    target = package[name]
    target = target.final_target if isinstance(target, griffe.Alias) else target
    sections = _sections(target)
    documented = _names(sections, {"parameters", "other parameters", "attributes"})
    if target.kind.value == "class" and "__init__" in target.members:
        documented |= _names(_sections(target.members["__init__"]), {"parameters"})
    missing = [p for p in _parameters(obj) if p not in documented]
    assert not missing, f"{name}: parameters without a description: {missing}"
    if target.kind.value == "function":
        if _returns_a_value(obj):
            kinds = {s.kind.value for s in sections}
            assert "returns" in kinds or "yields" in kinds, f"{name}: no Returns section"
