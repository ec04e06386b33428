"""Dimension expressions: a tensor dim as a function of the model's dynamic input dims.

A dim is an ``int`` or a string over the model's symbols in the syntax sympy prints
(what ONNX Runtime's symbolic shape inference writes into ``dim_param``)::

    N      floor(H/4)      32*floor(W/32) + 1      Max(1, W - 3)      N*floor(H/4)*floor(W/4)

:func:`evaluate` computes one exactly (rational arithmetic, so ``floor(H/4)`` at ``H=30``
is 7) from a mapping of symbol to size, with no sympy: the device's policy evaluates
crossing bytes at a request's dims with the standard library only. Parsing goes through
Python's ``ast`` with a whitelist of node types and functions; anything else is an error.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from typing import Union

from devices.errors import PartitionError

Dim = Union[int, str]  # noqa: UP007 - a runtime alias; Python 3.8 has no int | str

_FUNCS = {
    "floor": lambda a: Fraction(math.floor(a)),
    "ceil": lambda a: Fraction(math.ceil(a)),
    "Max": max,
    "Min": min,
    "Mod": lambda a, b: a - b * Fraction(math.floor(a / b)),
    "Abs": abs,
}


@lru_cache(maxsize=4096)
def _parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise PartitionError(f"dim expression {text!r}: not an expression ({exc.msg})") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise PartitionError(f"dim expression {text!r}: unsupported call")
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant,
                                   ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
                                   ast.Pow, ast.USub, ast.UAdd, ast.Mod)):
            raise PartitionError(f"dim expression {text!r}: unsupported syntax {type(node).__name__}")
    return tree


def symbols_of(dim: Dim) -> frozenset:
    """The symbol names a dim depends on (empty for an int)."""
    if isinstance(dim, int):
        return frozenset()
    tree = _parse(dim)
    return frozenset(n.id for n in ast.walk(tree)
                     if isinstance(n, ast.Name) and n.id not in _FUNCS)


def _eval(node: ast.AST, sizes: Mapping[str, int], text: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, sizes, text)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise PartitionError(f"dim expression {text!r}: bad constant {node.value!r}")
        return Fraction(node.value)
    if isinstance(node, ast.Name):
        if node.id not in sizes:
            raise PartitionError(
                f"dim expression {text!r}: no size given for '{node.id}' "
                f"(given: {', '.join(sorted(sizes)) or 'none'})"
            )
        return Fraction(int(sizes[node.id]))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, sizes, text)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, sizes, text), _eval(node.right, sizes, text)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise PartitionError(f"dim expression {text!r}: division by zero")
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.FloorDiv):
            return Fraction(math.floor(a / b))
        if isinstance(op, ast.Mod):
            return a - b * Fraction(math.floor(a / b))
        if isinstance(op, ast.Pow):
            return Fraction(a ** int(b))
    if isinstance(node, ast.Call):
        args = [_eval(a, sizes, text) for a in node.args]
        return Fraction(_FUNCS[node.func.id](*args))  # type: ignore[attr-defined]
    raise PartitionError(f"dim expression {text!r}: cannot evaluate")


def evaluate(dim: Dim, sizes: Mapping[str, int]) -> int:
    """The dim's value for the given symbol sizes (an ``int`` is itself)."""
    if isinstance(dim, int):
        return dim
    value = _eval(_parse(dim), sizes, dim)
    if value.denominator != 1:
        raise PartitionError(f"dim expression {dim!r} is not whole at {dict(sizes)}: {value}")
    return int(value)


def numel(dims: tuple, sizes: Mapping[str, int]) -> int:
    """Elements of a tensor with these dims; a negative dim is an error, not a size."""
    n = 1
    for d in dims:
        v = evaluate(d, sizes)
        if v < 0:
            raise PartitionError(f"dim {d!r} is negative ({v}) at {dict(sizes)}")
        n *= v
    return n


def product(dims: tuple) -> str:
    """A dims tuple as one product expression (``"N*3*H*W"``), for plans that carry the
    formula of a tensor's size to the device."""
    parts = [str(d) if isinstance(d, int) else f"({d})" for d in dims]
    return "*".join(parts) if parts else "1"
