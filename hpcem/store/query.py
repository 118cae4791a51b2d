"""A tiny query language for sets, evaluated on columns (no ``eval``).

Grammar::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | "(" expr ")" | test
    test    := NAME op value | NAME ["not"] "between" value "and" value
             | NAME ["not"] "in" "(" value ("," value)* ")"
    op      := "<" | "<=" | ">" | ">=" | "==" | "=" | "!="
    value   := number | 'string' | "string" | true | false

``between`` is inclusive at both ends. Example:
``defocus_u between 15000 and 25000 and ctf_fit_resolution < 5``.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from hpcem.errors import QueryError

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<op><=|>=|==|!=|<|>|=)"
    r"|(?P<punct>[(),])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"and", "or", "not", "between", "in", "true", "false"}
_OPS: dict[str, Callable] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
}

#: A column getter: name -> numpy array (raises KeyError for unknown names).
Getter = Callable[[str], np.ndarray]


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(
                f"query {text!r}: cannot read {text[pos:].strip()[:20]!r} at character {pos}"
            )
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "num":
            tokens.append(("value", float(value) if any(c in value for c in ".eE") else int(value)))
        elif kind == "str":
            tokens.append(("value", value[1:-1]))
        elif kind == "name" and value.lower() in _KEYWORDS:
            low = value.lower()
            if low in ("true", "false"):
                tokens.append(("value", low == "true"))
            else:
                tokens.append(("kw", low))
        else:
            tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, text: str, getter: Getter, columns: Iterable[str]) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.getter = getter
        self.columns = list(columns)

    def error(self, msg: str) -> QueryError:
        return QueryError(f"query {self.text!r}: {msg}")

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: Any = None) -> Any:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            want = repr(value) if value is not None else kind
            got = repr(tok[1]) if tok else "end of query"
            raise self.error(f"expected {want}, found {got}")
        self.pos += 1
        return tok[1]

    def accept(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == kind and (value is None or tok[1] == value):
            self.pos += 1
            return True
        return False

    def parse(self) -> np.ndarray:
        if not self.tokens:
            raise self.error("empty query")
        mask = self.expr()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return mask

    def expr(self) -> np.ndarray:
        mask = self.and_()
        while self.accept("kw", "or"):
            mask = mask | self.and_()
        return mask

    def and_(self) -> np.ndarray:
        mask = self.not_()
        while self.accept("kw", "and"):
            mask = mask & self.not_()
        return mask

    def not_(self) -> np.ndarray:
        if self.accept("kw", "not"):
            return ~self.not_()
        if self.accept("punct", "("):
            mask = self.expr()
            self.take("punct", ")")
            return mask
        return self.test()

    def column(self, name: str) -> np.ndarray:
        return lookup(self.getter, self.columns, name, self.text)

    def test(self) -> np.ndarray:
        name = self.take("name")
        col = self.column(name)
        negate = self.accept("kw", "not")
        if self.accept("kw", "between"):
            lo = self.take("value")
            self.take("kw", "and")
            hi = self.take("value")
            mask = compare(col, ">=", lo, name, self.text) & compare(col, "<=", hi, name, self.text)
        elif self.accept("kw", "in"):
            self.take("punct", "(")
            values = [self.take("value")]
            while self.accept("punct", ","):
                values.append(self.take("value"))
            self.take("punct", ")")
            mask = isin(col, values, name, self.text)
        elif negate:
            raise self.error(f"expected 'between' or 'in' after '{name} not'")
        else:
            op = self.take("op")
            value = self.take("value")
            mask = compare(col, op, value, name, self.text)
        return ~mask if negate else mask


def lookup(getter: Getter, columns: list[str], name: str, text: str) -> np.ndarray:
    """The column called ``name``; QueryError naming close matches when unknown."""
    try:
        return getter(name)
    except KeyError:
        close = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise QueryError(
            f"query {text!r}: unknown column {name!r}{hint} (columns: {', '.join(columns)})"
        ) from None


def _check_value(col: np.ndarray, value: Any, name: str, text: str) -> Any:
    is_text = col.dtype == object or col.dtype.kind in "US"
    if is_text != isinstance(value, str):
        kind = "text" if is_text else "numeric"
        raise QueryError(
            f"query {text!r}: column {name!r} is {kind}, cannot compare it with {value!r}"
        )
    return value


def compare(col: np.ndarray, op: str, value: Any, name: str, text: str = "") -> np.ndarray:
    """Boolean mask of ``col <op> value``."""
    value = _check_value(col, value, name, text)
    return np.asarray(_OPS[op](col, value), dtype=bool)


def isin(col: np.ndarray, values: list, name: str, text: str = "") -> np.ndarray:
    """Boolean mask of ``col in values``."""
    for v in values:
        _check_value(col, v, name, text)
    if col.dtype == object:
        wanted = set(values)
        return np.fromiter((c in wanted for c in col), dtype=bool, count=len(col))
    return np.isin(col, np.asarray(values))


def evaluate(
    text: str | None, getter: Getter, columns: Iterable[str], n_rows: int, **keywords: Any
) -> np.ndarray:
    """Evaluate a query string and/or keyword conditions into a boolean mask.

    Keyword form: ``name=(lo, hi)`` is an inclusive range, ``name=[a, b]`` or a set is
    membership, any other value is equality. All conditions are combined with ``and``.
    """
    columns = list(columns)
    mask = np.ones(n_rows, dtype=bool)
    if text is not None:
        mask &= _Parser(text, getter, columns).parse()
    for name, cond in keywords.items():
        text_kw = f"{name}={cond!r}"
        col = lookup(getter, columns, name, text_kw)
        if isinstance(cond, tuple):
            if len(cond) != 2:
                raise QueryError(f"query {text_kw}: a range is (low, high)")
            lo, hi = cond
            if lo is not None:
                mask &= compare(col, ">=", lo, name, text_kw)
            if hi is not None:
                mask &= compare(col, "<=", hi, name, text_kw)
        elif isinstance(cond, (list, set, frozenset, np.ndarray)):
            mask &= isin(col, list(cond), name, text_kw)
        else:
            mask &= compare(col, "==", cond, name, text_kw)
    return mask
