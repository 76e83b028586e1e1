from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class Stream(Base):
    """A registered stream. Ids are global, not per org: the SpacetimeDB module keys its data by
    stream id alone, so two orgs must never hold grants to the same id."""

    __tablename__ = "streams"
    __table_args__ = (Index("ix_streams_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(170), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("principals.id", ondelete="SET NULL"), index=True
    )
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuerySet(Base):
    __tablename__ = "query_sets"
    __table_args__ = (
        UniqueConstraint("org_id", "name"),
        Index("ix_query_sets_org_id_id", "org_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    stream_kinds: Mapped[list[str]] = mapped_column(JSON)
    queries: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GrantRule(Base):
    __tablename__ = "grant_rules"
    __table_args__ = (Index("ix_grant_rules_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    effect: Mapped[str] = mapped_column(String(8))
    subject_principal_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject_roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject_kinds: Mapped[list[str]] = mapped_column(JSON, default=list)
    stream_kind: Mapped[str] = mapped_column(String(32))
    stream_relation: Mapped[str] = mapped_column(String(8))
    stream_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    query_sets: Mapped[list[str]] = mapped_column(JSON)
    ops: Mapped[list[str]] = mapped_column(JSON)
    max_ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RetiredStreamId(Base):
    """A deleted stream's id and the org that held it. Stream ids are global, and a token of
    that org naming the id may outlive the stream (and a SpacetimeDB module may still hold its
    rows), so the id is never bound to another org again; its own org may register it anew."""

    __tablename__ = "retired_stream_ids"

    id: Mapped[str] = mapped_column(String(170), primary_key=True)
    # No foreign key: the id stays retired even if the org that held it is deleted.
    org_id: Mapped[str] = mapped_column(String(40))
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
