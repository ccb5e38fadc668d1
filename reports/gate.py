"""``--fail-if`` release gates: a tiny, safe expression language over named metrics.

Grammar (no Python ``eval``; a hand-written recursive-descent parser)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand OP operand          OP in  < <= > >= == !=
    operand    := NUMBER | METRIC
    METRIC     := a name from the report's "metrics" (e.g. memorized_token_fraction),
                  or a dotted path into the metrics JSON
                  (e.g. per_attack.divergence.memorized_generations)

Numbers accept ``1e-3``, ``0.001``, ``5%`` (= 0.05) and ``_`` separators; a number must be
finite. A metric name that trawl never computes is a :class:`~reports.errors.ReportError`
when the expression is parsed (:func:`check_metric_name`: before any sampling or matching,
in ``trawl report``, ``trawl run --check`` and sweeps); so is, at evaluation, one whose
value is not available for the run (``null``, e.g. cost per window with no cost
recorded): a gate that cannot be evaluated must not silently pass.
"""
from __future__ import annotations

import math
import operator
import re

from reports.errors import ReportError

FAIL_EXIT_CODE = 3

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][+-]?\d+)?%?)
  | (?P<op><=|>=|==|!=|<|>)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)
""", re.VERBOSE)

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}


def _tokens(expr: str):
    pos, out = 0, []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ReportError(f"--fail-if: cannot parse {expr[pos:pos + 20]!r} at column {pos + 1} of {expr!r}")
        kind = m.lastgroup
        if kind != "ws":
            val = m.group(0)
            if kind == "name" and val in ("and", "or", "not"):
                kind = val
            out.append((kind, val, pos))
        pos = m.end()
    out.append(("end", "", len(expr)))
    return out


class Gate:
    """A parsed ``--fail-if`` expression. ``Gate(expr).evaluate(metrics) -> bool``;
    ``.explain(metrics)`` gives the comparisons with their values."""

    def __init__(self, expr: str):
        if not isinstance(expr, str) or not expr.strip():
            raise ReportError("--fail-if: empty expression")
        self.expr = expr
        self._toks = _tokens(expr)
        self._i = 0
        self.tree = self._or()
        if self._peek()[0] != "end":
            k, v, p = self._peek()
            raise ReportError(f"--fail-if: unexpected {v!r} at column {p + 1} of {expr!r}")
        self.names = sorted({n for n in self._names(self.tree)})
        for n in self.names:
            check_metric_name(n)

    # -- parser
    def _peek(self):
        return self._toks[self._i]

    def _next(self):
        t = self._toks[self._i]
        self._i += 1
        return t

    def _or(self):
        node = self._and()
        while self._peek()[0] == "or":
            self._next()
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._peek()[0] == "and":
            self._next()
            node = ("and", node, self._not())
        return node

    def _not(self):
        k = self._peek()[0]
        if k == "not":
            self._next()
            return ("not", self._not())
        if k == "lp":
            self._next()
            node = self._or()
            if self._next()[0] != "rp":
                raise ReportError(f"--fail-if: missing ')' in {self.expr!r}")
            return node
        return self._cmp()

    def _operand(self):
        k, v, p = self._next()
        if k == "num":
            txt = v.replace("_", "")
            scale = 0.01 if txt.endswith("%") else 1.0
            try:
                num = float(txt.rstrip("%")) * scale
            except ValueError:
                raise ReportError(f"--fail-if: bad number {v!r} in {self.expr!r}") from None
            if not math.isfinite(num):      # 1e999: inf
                raise ReportError(f"--fail-if: number {v!r} is out of range in {self.expr!r}")
            return ("num", num)
        if k == "name":
            return ("name", v)
        what = "end of expression" if k == "end" else repr(v)
        raise ReportError(f"--fail-if: expected a metric name or a number at column {p + 1}, got {what} "
                          f"in {self.expr!r}")

    def _cmp(self):
        left = self._operand()
        k, v, p = self._next()
        if k != "op":
            what = "end of expression" if k == "end" else repr(v)
            raise ReportError(f"--fail-if: expected a comparison (< <= > >= == !=) at column {p + 1}, got {what} "
                              f"in {self.expr!r}")
        right = self._operand()
        return ("cmp", v, left, right)

    def _names(self, node):
        if node[0] in ("and", "or"):
            yield from self._names(node[1])
            yield from self._names(node[2])
        elif node[0] == "not":
            yield from self._names(node[1])
        elif node[0] == "cmp":
            for side in node[2:]:
                if side[0] == "name":
                    yield side[1]

    # -- evaluation
    def check_names(self, metrics: dict) -> None:
        for n in self.names:
            lookup(metrics, n)

    def evaluate(self, metrics: dict) -> bool:
        self.check_names(metrics)
        return self._eval(self.tree, metrics)

    def _eval(self, node, m):
        op = node[0]
        if op == "or":
            return self._eval(node[1], m) or self._eval(node[2], m)
        if op == "and":
            return self._eval(node[1], m) and self._eval(node[2], m)
        if op == "not":
            return not self._eval(node[1], m)
        _, cmp, a, b = node
        return _OPS[cmp](self._value(a, m), self._value(b, m))

    def _value(self, side, m):
        if side[0] == "num":
            return side[1]
        v = lookup(m, side[1])
        return v

    def explain(self, metrics: dict) -> str:
        vals = ", ".join(f"{n} = {_fmt(lookup(metrics, n))}" for n in self.names)
        return f"{self.expr}  ({vals})"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def metric_names() -> frozenset[str]:
    """Every name of metrics.json's ``metrics`` object (the figures trawl computes, from
    :data:`reports.metrics.DEFINITIONS` with its patterns expanded)."""
    from reports.categories import CATEGORIES
    from reports.metrics import DEFINITIONS
    from reports.spans import THRESHOLDS

    out = set()
    for k in DEFINITIONS:
        if k == "memorized_window":               # a definition, not a figure
            continue
        if k == "category_<name>":
            out.update(f"category_{c}" for c in CATEGORIES)
        elif k.endswith("_ge_T"):
            out.update(f"{k[:-1]}{t}" for t in THRESHOLDS)
        else:
            out.add(k)
    return frozenset(out)


# metrics.json sections a dotted name may go into: figure tables (the leaf must be a figure name,
# after this many levels of attack / variant names) and other sections (checked at evaluation)
_FIGURE_TABLES = {"metrics": 0, "per_attack": 1, "per_variant": 2}
_SECTIONS = ("by_category", "extrapolation", "longest_run", "repeated_draws", "near_duplicates", "categories",
             "run_lengths", "taxonomy", "approximate", "run", "parameters", "ranking")


def check_metric_name(name: str) -> None:
    """ReportError unless ``name`` can name a figure of metrics.json: a name of the ``metrics``
    object, or a dotted path into it (``per_attack.<attack>.<figure>``,
    ``per_variant.<attack>.<variant>.<figure>``, ``by_category.<class>.<figure>``, ...)."""
    known = metric_names()
    parts = name.split(".")
    if len(parts) == 1:
        if name in known:
            return
        import difflib

        close = difflib.get_close_matches(name.lower(), sorted(known), n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see metrics.json's \"metrics\" names)"
        raise ReportError(f"--fail-if: unknown metric {name!r}{hint}")
    head = parts[0]
    if head in _FIGURE_TABLES:
        if len(parts) != _FIGURE_TABLES[head] + 2 or parts[-1] not in known:
            shape = {"metrics": "metrics.<figure>", "per_attack": "per_attack.<attack>.<figure>",
                     "per_variant": "per_variant.<attack>.<variant>.<figure>"}[head]
            raise ReportError(f"--fail-if: unknown metric {name!r} (expected {shape}, <figure> a name of "
                              f"metrics.json's \"metrics\")")
        return
    if head not in _SECTIONS:
        raise ReportError(f"--fail-if: unknown metric {name!r} (a dotted name starts with one of "
                          f"{', '.join([*_FIGURE_TABLES, *_SECTIONS])})")


def lookup(metrics: dict, name: str) -> float:
    """Value of a metric by name (``metrics`` section) or dotted path; ReportError when unknown
    or not a number."""
    flat = metrics.get("metrics", {}) if isinstance(metrics, dict) else {}
    if name in flat:
        v, found = flat[name], True
    else:
        cur, found = metrics, True
        for part in name.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                found = False
                break
        v = cur
    if not found:
        close = [k for k in flat if name.lower() in k or k in name.lower()][:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(sorted(flat)[:8])}, ...)"
        raise ReportError(f"--fail-if: unknown metric {name!r}{hint}")
    if v is None:
        raise ReportError(f"--fail-if: metric {name!r} is not available for this run (n/a), so the gate "
                          "cannot be evaluated")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        raise ReportError(f"--fail-if: {name!r} is not a number")
    return float(v)
