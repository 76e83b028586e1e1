"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from control.audit.models import AuditEvent
from control.federation.models import FederatedIdentity, TrustedIssuer
from control.identity.models import Credential, Org, Principal
from control.keys.models import SigningKey
from control.kit.db import Base
from control.kit.locks import ControlLock
from control.policy.models import GrantRule, QuerySet, Stream
from control.revocations.models import Revocation
from control.tokens.models import ReplicaHeartbeat

metadata = Base.metadata

__all__ = [
    "AuditEvent",
    "ControlLock",
    "Credential",
    "FederatedIdentity",
    "GrantRule",
    "Org",
    "Principal",
    "QuerySet",
    "ReplicaHeartbeat",
    "Revocation",
    "SigningKey",
    "Stream",
    "TrustedIssuer",
    "metadata",
]
