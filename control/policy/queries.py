"""Validation of subscription queries: the SpacetimeDB subscription subset we accept.

A query is one `SELECT * FROM <table or view>`, optionally with a simple `WHERE` of
`column <op> literal` terms joined by AND. No `;`, no comments, nothing else.
"""

from __future__ import annotations

import re

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_LITERAL = r"(?:-?[0-9]+(?:\.[0-9]+)?|'[^'\\\x00-\x1f]*'|true|false|TRUE|FALSE)"
_TERM = rf"{_IDENT}\s*(?:=|!=|<>|<=|>=|<|>)\s*{_LITERAL}"
_QUERY = re.compile(
    rf"^\s*SELECT\s+\*\s+FROM\s+({_IDENT})(?:\s+WHERE\s+{_TERM}(?:\s+AND\s+{_TERM})*)?\s*\Z",
    re.IGNORECASE,
)
_FORBIDDEN = (";", "--", "/*", "*/")


def query_problem(query: str) -> str | None:
    """Why `query` is not an acceptable subscription query, or None when it is."""
    for token in _FORBIDDEN:
        if token in query:
            return f"contains {token!r}"
    if _QUERY.match(query) is None:
        return "is not a single `SELECT * FROM <table>` with an optional simple WHERE"
    return None


def queried_table(query: str) -> str:
    match = _QUERY.match(query)
    assert match is not None, "validate first"
    return match.group(1)
