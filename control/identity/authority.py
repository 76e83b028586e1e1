"""Who may act on whom: the one rule for powers an admin confers or exercises over another.

Two roles carry authority over this service itself: `admin` (an org's admin API) and `operator`
(the issuer's signing keys, shared by every org). An admin may act on a principal (issue or
revoke its credentials, disable, delete, change its roles, revoke its tokens) only when it holds
every one of those roles the principal holds, and may confer one of them (on a principal, or
through a trusted issuer's `default_roles` / `role_map`) only when it holds it. Other roles
(`member`, `service`, an org's own role names) mean only what the org's grant rules say, and
every admin writes those rules, so they are within every admin's authority.

`operator` is honoured only in the operator org (the first org bootstrapped): a principal of any
other org never acts as an operator, whatever its stored roles say.
"""

from __future__ import annotations

from collections.abc import Iterable

from control.errors import Forbidden

OPERATOR_ROLE = "operator"
ADMIN_ROLE = "admin"
# The roles that carry authority over the service; the order is the order of messages.
PRIVILEGED_ROLES = (OPERATOR_ROLE, ADMIN_ROLE)


def missing_authority(held: Iterable[str], roles: Iterable[str]) -> list[str]:
    """The privileged roles among `roles` that `held` lacks."""
    have, wanted = set(held), set(roles)
    return [role for role in PRIVILEGED_ROLES if role in wanted and role not in have]


def require_authority(held: Iterable[str], roles: Iterable[str], action: str) -> None:
    """Raise 403 unless the holder of `held` may `action` something carrying `roles`."""
    missing = missing_authority(held, roles)
    if missing:
        needed = " and ".join(f"the {role} role" for role in missing)
        raise Forbidden(f"only a caller holding {needed} may {action}")
