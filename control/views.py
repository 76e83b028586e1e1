"""The view layer: every read of org-owned rows passes through here.

A view is bound to the caller and applies the row filter (the caller's org) to every query it
builds, so a handler cannot forget it. A row of another org reads exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Executable, Result, Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from control.errors import InvalidRequest, NotFound
from control.kit.pagination import PageRequest, encode_cursor


class OrgOwned(Protocol):
    org_id: Any


Row = TypeVar("Row", bound=OrgOwned)

_INT64 = range(-(2**63), 2**63)


def bindable(value: Any) -> bool:
    """Whether `value` can be compared with a key column on every backend: PostgreSQL refuses
    NUL in text and both backends refuse integers beyond 64 bits. A key that cannot be bound
    cannot match a row, so callers treat it as missing rather than failing with a 500."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, int) and not isinstance(value, bool):
        return value in _INT64
    return True


class OrgView:
    """Reads of org-owned rows, filtered to one org."""

    def __init__(self, session: Session, org_id: str) -> None:
        self.session = session
        self.org_id = org_id

    def select(self, model: type[Row]) -> Select[Row]:
        return select(model).where(model.org_id == self.org_id)

    def execute(self, statement: Executable, **params: Any) -> Result[Any]:
        """Run a statement built once for a hot path, filtered by its `org_id` parameter: the
        view binds it to this org, whatever else the caller passes."""
        return self.session.execute(statement, {**params, "org_id": self.org_id})

    def find(self, model: type[Row], key: Any) -> Row | None:
        if not bindable(key):
            return None
        row = self.session.get(model, key)
        if row is None or row.org_id != self.org_id:
            return None
        return row

    def get(self, model: type[Row], key: Any, what: str) -> Row:
        row = self.find(model, key)
        if row is None:
            raise NotFound(what)
        return row

    def find_by(self, model: type[Row], *conditions: ColumnElement[bool]) -> Row | None:
        return self.session.scalars(self.select(model).where(*conditions).limit(1)).first()

    def all(self, model: type[Row], *conditions: ColumnElement[bool]) -> Sequence[Row]:
        return self.session.scalars(self.select(model).where(*conditions)).all()

    def page(
        self,
        model: type[Row],
        page: PageRequest,
        key: InstrumentedAttribute[Any],
        *conditions: ColumnElement[bool],
    ) -> tuple[Sequence[Row], str | None]:
        """One page ordered by `key` (unique, increasing), and the cursor of the next page."""
        query = self.select(model).where(*conditions).order_by(key).limit(page.limit + 1)
        if page.after is not None:
            # The cursor is client input: it must have the key column's type (a string cursor
            # on an integer key is a database error on PostgreSQL) and be bindable.
            if (
                not isinstance(page.after, key.type.python_type)
                or isinstance(page.after, bool)
                or not bindable(page.after)
            ):
                raise InvalidRequest("`cursor` is not a cursor this service issued")
            query = query.where(key > page.after)
        rows = self.session.scalars(query).all()
        if len(rows) <= page.limit:
            return rows, None
        rows = rows[: page.limit]
        return rows, encode_cursor(getattr(rows[-1], key.key))
