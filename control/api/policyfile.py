"""Policy as code over HTTP: the org's policy as one document, and applying one."""

from __future__ import annotations

from control.api.auth import CallerDep, ViewDep
from control.api.deps import StateDep
from control.policyfile import service
from control.policyfile.schemas import PolicyApplied, PolicyApply, PolicyDocument


def export_policy(view: ViewDep) -> PolicyDocument:
    """The org's query sets, streams, grant rules and trusted issuers as one document, in a stable
    order, to keep in version control and apply with `POST /api/admin/policy:apply` (or `control
    policy apply`). Principals and credentials are not part of it. Needs the `admin` role.
    """
    return service.export(view)


def apply_policy(
    body: PolicyApply, view: ViewDep, caller: CallerDep, state: StateDep
) -> PolicyApplied:
    """Make the org's policy match `document` in one transaction: create, update and delete query
    sets, streams, grant rules and trusted issuers until it does. Each change is checked, audited
    and revokes tokens exactly as the matching API call would; the first that fails (422, 403,
    409) fails the whole apply, and nothing changes. With `dry_run`, the answer reports the changes
    and the principals whose tokens they would revoke, and nothing changes. Applying the same
    document twice changes nothing the second time. Needs the `admin` role.
    """
    return service.apply(view, caller, body.document, state.settings, dry_run=body.dry_run)
