"""Who is calling: the principal a request acts as, whatever credential it presented."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control.errors import Forbidden
from control.identity.authority import OPERATOR_ROLE


@dataclass(frozen=True)
class Caller:
    principal_id: str
    org_id: str
    kind: str
    roles: frozenset[str]
    credential_id: str | None = None

    def has_any(self, roles: frozenset[str]) -> bool:
        return bool(self.roles & roles)

    def require_any(self, roles: frozenset[str]) -> None:
        """403 unless the caller holds one of `roles`, as every route's guard answers."""
        if not self.has_any(roles):
            needed = " or ".join(sorted(roles))
            raise Forbidden(f"this route needs the {needed} role")


def effective_roles(roles: Iterable[str], *, operator_org: bool) -> frozenset[str]:
    """The roles a principal acts with: `operator` only counts in the operator org (the
    issuer's keys are that org's), whatever a principal elsewhere has stored."""
    held = frozenset(roles)
    return held if operator_org else held - {OPERATOR_ROLE}
