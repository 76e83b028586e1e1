"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from control.audit.models import AuditEvent
from control.console.models import ConsoleSession
from control.federation.models import FederatedIdentity, TrustedIssuer
from control.identity.models import Credential, Org, Principal
from control.keys.models import SigningKey
from control.kit.db import Base
from control.kit.locks import ControlLock
from control.policy.models import GrantRule, QuerySet, Stream
from control.revocations.models import Revocation
from control.spacetime.models import Delivery, OutboxEntry
from control.tokens.models import ReplicaHeartbeat

metadata = Base.metadata

__all__ = [
    "AuditEvent",
    "ConsoleSession",
    "ControlLock",
    "Credential",
    "Delivery",
    "FederatedIdentity",
    "GrantRule",
    "Org",
    "OutboxEntry",
    "Principal",
    "QuerySet",
    "ReplicaHeartbeat",
    "Revocation",
    "SigningKey",
    "Stream",
    "TrustedIssuer",
    "metadata",
]
