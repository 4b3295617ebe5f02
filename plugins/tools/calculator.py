"""Exact arithmetic for the model: the expression is parsed with ``ast`` and only numbers,
arithmetic operators, parentheses and a few functions are evaluated, by this module, never by
``eval``. Numbers are fractions, so 0.1 + 0.2 is exactly 3/10.

Every intermediate result is bounded (MAX_BITS), and a power is refused before it is computed
when its result would exceed that bound, so no expression can cost much time or memory.
"""
import ast
import math
import re
from decimal import Decimal, localcontext
from fractions import Fraction

MAX_CHARS = 500
MAX_DEPTH = 250  # a 500-character chain like 1+1+...+1 is about this deep
# About 3,000 decimal digits: below Python's int-to-text limit (4,300 digits) and well inside
# the tool output limit.
MAX_BITS = 10_000
SIGNIFICANT = 20
EXPONENT = re.compile(r"[eE]([+-]?\d+)$")

SCHEMA = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string", "maxLength": MAX_CHARS,
            "description": "An arithmetic expression, e.g. (17 * 3 + 2) / 7 or 2 ** 100. "
                           "Operators + - * / // % ** and parentheses; functions abs, round, min, max, sqrt.",
        },
    },
    "required": ["expression"],
    "additionalProperties": False,
}
DESCRIPTION = ("Calculate an arithmetic expression exactly (fractions, big integers). "
               "Use it for any arithmetic instead of working it out yourself.")
ALLOWED = "numbers, + - * / // % **, parentheses and the functions abs, round, min, max, sqrt"


class Inexact:
    """Set when a result went through sqrt of a non-square: the answer is then an approximation."""

    def __init__(self):
        self.used = False


def _check_size(value):
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ValueError(f"the result has more than about {int(MAX_BITS * math.log10(2)):,} digits, "
                         "more than this calculator works with")
    return value


def _power(base, exponent):
    if exponent.denominator != 1:
        raise ValueError("only whole-number exponents are supported (use sqrt for square roots)")
    e = exponent.numerator
    if base == 0 and e < 0:
        raise ZeroDivisionError("division by zero (0 to a negative power)")
    if abs(e) > 1 and base not in (0, 1, -1):
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if (bits - 1) * abs(e) > MAX_BITS:  # a lower bound of the result's size, known before computing it
            raise ValueError(f"the power is too large: the result would have more than about "
                             f"{int(MAX_BITS * math.log10(2)):,} digits")
    return base ** e


def _sqrt(value, inexact):
    if value < 0:
        raise ValueError("sqrt of a negative number")
    p, q = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if p * p == value.numerator and q * q == value.denominator:
        return Fraction(p, q)
    inexact.used = True
    with localcontext() as ctx:
        ctx.prec = SIGNIFICANT + 20
        return Fraction((Decimal(value.numerator) / Decimal(value.denominator)).sqrt())


def _round(value, digits=None):
    if digits is None:
        return Fraction(round(value))
    if digits.denominator != 1 or abs(digits.numerator) > 1000:
        raise ValueError("round's second argument must be a whole number of digits")
    return round(value, digits.numerator)


OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}
FUNCTIONS = {"abs": (1, 1), "round": (1, 2), "min": (1, 50), "max": (1, 50), "sqrt": (1, 1)}


def _number(node, source):
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{ast.get_source_segment(source, node) or repr(value)} is not a number")
    if isinstance(value, int):
        return _check_size(Fraction(value))
    # From the literal's text, not the float: 0.1 is exactly 1/10, and digits past a float's
    # precision are kept.
    text = (ast.get_source_segment(source, node) or repr(value)).replace("_", "")
    exponent = EXPONENT.search(text)
    if exponent and abs(int(exponent.group(1))) > MAX_BITS:  # 1e999999999 would build that power of ten
        raise ValueError(f"{text} is too large a number")
    return _check_size(Fraction(text))


def _evaluate(node, source, depth, inexact):
    if depth > MAX_DEPTH:
        raise ValueError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if isinstance(node, ast.Constant):
        return _number(node, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, source, depth, inexact)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        op = OPERATORS.get(type(node.op))
        if op is None:
            hint = " (for powers write **)" if isinstance(node.op, ast.BitXor) else ""
            raise ValueError(f"the operator {type(node.op).__name__} is not supported{hint}")
        left = _evaluate(node.left, source, depth, inexact)
        right = _evaluate(node.right, source, depth, inexact)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _check_size(op(left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        name = node.func.id
        low, high = FUNCTIONS[name]
        if node.keywords or not low <= len(node.args) <= high:
            raise ValueError(f"{name}() takes {low}{'' if low == high else f' to {high}'} argument(s)")
        args = [_evaluate(a, source, depth, inexact) for a in node.args]
        if name == "sqrt":
            return _sqrt(args[0], inexact)
        if name == "round":
            return _check_size(_round(*args))
        return {"abs": abs, "min": min, "max": max}[name](*args)
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.get_source_segment(source, node.func)
        raise ValueError(f"unknown function {name!r}: only {ALLOWED} are allowed")
    if isinstance(node, ast.Name):
        raise ValueError(f"unknown name {node.id!r}: only {ALLOWED} are allowed")
    raise ValueError(f"{type(node).__name__} is not allowed: only {ALLOWED}")


def _approximate(value):
    with localcontext() as ctx:
        ctx.prec = SIGNIFICANT
        return str(Decimal(value.numerator) / Decimal(value.denominator))


def _exact_decimal(value, max_places=50):
    """``value`` written out as a decimal when its denominator has no prime but 2 and 5 (so the
    digits end), with at most ``max_places`` after the point; None otherwise."""
    q, places = value.denominator, 0
    for p in (2, 5):
        count = 0
        while q % p == 0:
            q //= p
            count += 1
        places = max(places, count)
    if q != 1 or places > max_places:
        return None
    digits = str(abs(value.numerator) * (10 ** places // value.denominator)).rjust(places + 1, "0")
    text = digits[:-places] + "." + digits[-places:] if places else digits
    return ("-" if value < 0 else "") + text


def evaluate(expression):
    """The exact value of ``expression`` (a Fraction) and whether a sqrt made it approximate."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("the expression is empty")
    if len(expression) > MAX_CHARS:
        raise ValueError(f"the expression is longer than {MAX_CHARS} characters")
    source = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not an arithmetic expression ({getattr(exc, 'msg', None) or exc})") from None
    inexact = Inexact()
    try:
        return _evaluate(tree.body, source, 0, inexact), inexact.used
    except RecursionError:
        raise ValueError(f"the expression is nested more than {MAX_DEPTH} levels deep") from None


def render(value, inexact=False):
    """An integer as is; a fraction whose decimal ends soon as that decimal; anything else as the
    fraction and its decimal to SIGNIFICANT digits."""
    if inexact:
        return f"≈ {_approximate(value)}"
    if value.denominator == 1:
        return str(value.numerator)
    exact = _exact_decimal(value)
    if exact is not None:
        return exact
    return f"{value.numerator}/{value.denominator} ≈ {_approximate(value)}"


def calculator(arguments, context):
    value, inexact = evaluate(arguments["expression"])
    return render(value, inexact)
