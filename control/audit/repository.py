"""The audit log's one write, built once, and of the table rather than the entity: a mint then
pays neither the statement's construction nor the ORM's bulk-insert machinery."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, insert

from control.audit.models import AuditEvent

INSERT_EVENT = insert(cast(Table, AuditEvent.__table__))
