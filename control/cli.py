"""The `control` command line: serve, migrate, export/check the spec, operate keys and orgs."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from control.settings import Settings, SettingsError, load_settings

SPEC_PATH = Path("openapi/openapi.json")


def _settings() -> Settings:
    # Every command reads its settings here, so a bad configuration is reported by `main` as
    # value-free lines, never as pydantic's message (which quotes inputs) or a traceback.
    return load_settings()


def render_spec() -> str:
    from control.app import build_openapi, create_app

    spec = build_openapi(create_app(_settings(), background=False))
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control.app import create_app, prepare
    from control.migrate import upgrade
    from control.observability.logs import configure as configure_logging
    from control.spacetime.catalog import catalog_for
    from control.state import AppState

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    workers: int = args.workers
    if workers < 1:
        raise SettingsError("--workers must be at least 1")
    if workers > 1 and settings.sqlalchemy_url.startswith("sqlite"):
        # SQLite has one writer per database: worker processes would queue on its file lock
        # instead of on one process's event loop, and serve less, not more.
        raise SettingsError(
            "--workers above 1 needs PostgreSQL (CONTROL_DATABASE_URL); SQLite serves with one"
        )
    # The query-set catalog, then secrets (dev mode generates missing ones): a configuration
    # that cannot run the service must not write a secret or migrate a database.
    catalog_for(settings)
    settings.key_encryption_key_bytes()
    settings.credential_pepper_bytes()
    # The embedded default needs nothing else on first run; a shared PostgreSQL is migrated
    # deliberately with `control db upgrade`, never implicitly by a replica starting up.
    if settings.sqlalchemy_url.startswith("sqlite"):
        upgrade(settings.sqlalchemy_url)
    # Fail before serving, with one line naming the setting (`main` prints it), when the
    # signing keys do not open under the configured key-encryption key.
    preflight = AppState.build(settings)
    try:
        prepare(preflight)
    finally:
        preflight.engine.dispose()
    if workers > 1:
        # Each worker builds its own app (and state) from the same environment. Metrics add up
        # across workers through files in one directory (control.observability.metrics).
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="control-metrics-")
        uvicorn.run(
            "control.app:create_app",
            factory=True,
            workers=workers,
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            access_log=False,
        )
        return 0
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        # JSON: uvicorn's own lines go through the root handler too, one object per line.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,  # `control.access` logs each request, by route, never the raw path
    )
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from control.migrate import upgrade

    upgrade(_settings().sqlalchemy_url, args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def cmd_openapi_export(args: argparse.Namespace) -> int:
    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_spec())
    print(f"wrote {path}")
    return 0


def cmd_openapi_check(args: argparse.Namespace) -> int:
    path = Path(args.path)
    generated = render_spec()
    committed = path.read_text() if path.exists() else ""
    if committed == generated:
        print(f"{path} matches the route table")
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True),
        generated.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile="generated from the route table",
    )
    sys.stdout.writelines(diff)
    print(f"\n{path} is stale: run `control openapi export`", file=sys.stderr)
    return 1


def cmd_module_catalog_check(args: argparse.Namespace) -> int:
    """The module's catalog and the copy this control plane enforces are one catalog; with
    `--database`, every query set defined in the database is one the catalog serves. The
    catalog enforced is `CONTROL_QUERY_SET_CATALOG`'s, or the shipped copy when it is unset."""
    from control.spacetime.catalog import CATALOG_PATH, CatalogError, catalog_for, read_catalog

    settings = _settings()
    enforced = catalog_for(settings)
    source = "CONTROL_QUERY_SET_CATALOG" if settings.query_set_catalog else str(CATALOG_PATH)
    try:
        declared = read_catalog(Path(args.module))
    except CatalogError as exc:
        print(f"control: {exc}", file=sys.stderr)
        return 1
    if declared != enforced:
        print(
            f"control: {args.module} ({declared.label}) differs from the catalog the control "
            f"plane enforces ({source}, {enforced.label}): copy the module's catalog over it",
            file=sys.stderr,
        )
        return 1
    print(f"{args.module} and the control plane's catalog agree: {enforced.label}")
    if not args.database:
        return 0
    return _with_session(_served_query_sets)


def _served_query_sets(session: Any, settings: Settings, _cipher: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from control.policy.models import QuerySet
    from control.policy.queries import queried_table
    from control.spacetime.catalog import catalog_for

    catalog = catalog_for(settings)
    unserved = []
    for row in session.scalars(select(QuerySet).order_by(QuerySet.org_id, QuerySet.name)):
        selected = {queried_table(query) for query in row.queries}
        problem = catalog.definition_problem(row.name, row.version, row.stream_kinds, selected)
        if problem is not None:
            unserved.append({"org_id": row.org_id, "query_set": f"{row.name}@{row.version}",
                             "problem": problem})  # fmt: skip
    if unserved:
        raise SystemExit(json.dumps({"catalog": catalog.label, "unserved": unserved}, indent=2))
    return {"catalog": catalog.label, "unserved": []}


def cmd_module_identity(args: argparse.Namespace) -> int:
    """The control plane's SpacetimeDB Identity: `configure`'s `control_plane_identity`."""
    from control.spacetime.delivery import CONTROL_PLANE_SUBJECT
    from control.tokens.spacetime_identity import spacetimedb_identity

    print(spacetimedb_identity(_settings().issuer, CONTROL_PLANE_SUBJECT))
    return 0


def _with_session(action: Callable[[Any, Settings, Any], dict[str, Any]]) -> int:
    from control.keys.crypto import KeyCipher
    from control.kit.db import make_engine, make_sessionmaker, unit_of_work

    settings = _settings()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            result = action(session, settings, KeyCipher(settings.key_encryption_key_bytes()))
    finally:
        engine.dispose()
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from control.audit.service import Auditor
    from control.keys.service import ensure_keys, rotate

    def action(session: Any, settings: Settings, cipher: Any) -> dict[str, Any]:
        ensure_keys(session, settings, cipher)
        result = rotate(session, settings, cipher)
        Auditor(session, "cli", None).record("keys.rotate", result["active"], result)
        return result

    return _with_session(action)


def cmd_admin_bootstrap(args: argparse.Namespace) -> int:
    from control.identity.service import bootstrap_org

    def action(session: Any, settings: Settings, _cipher: Any) -> dict[str, Any]:
        return bootstrap_org(session, settings.credential_pepper_bytes(), args.org)

    return _with_session(action)


def cmd_token_mint(args: argparse.Namespace) -> int:
    from control.app import prepare
    from control.errors import NotFound
    from control.identity.caller import Caller
    from control.identity.models import Principal
    from control.kit.db import unit_of_work
    from control.state import AppState
    from control.tokens.schemas import TokenRequest
    from control.tokens.service import Refused, mint

    state = AppState.build(_settings())
    try:
        prepare(state)
        with unit_of_work(state.sessions) as session:
            principal = session.get(Principal, args.principal)
            if principal is None or principal.disabled:
                raise NotFound("enabled principal")
            caller = Caller(
                principal_id=principal.id,
                org_id=principal.org_id,
                kind=principal.kind,
                roles=frozenset(principal.roles),
            )
            body = TokenRequest(
                streams=args.stream,
                query_sets=args.query_set or None,
                ops=args.op or None,
                ttl_seconds=args.ttl,
                allow_partial=args.allow_partial,
            )
            outcome = mint(
                session,
                caller,
                body,
                settings=state.settings,
                keys=state.keyring.snapshot,
                policies=state.policies,
                actor="cli",
            )
    finally:
        state.engine.dispose()
    # The refusal's audit event committed with the unit of work; now say why.
    if isinstance(outcome, Refused):
        raise outcome.problem()
    print(outcome.response.model_dump_json(indent=2))
    return 0


def _org_caller(session: Any, org: str) -> Any:
    """The command line acting in `org` (its id or name): trusted with the authority of the
    database it holds, recorded in the audit log as `cli`."""
    from sqlalchemy import or_, select

    from control.errors import NotFound
    from control.identity.authority import ADMIN_ROLE, OPERATOR_ROLE
    from control.identity.caller import Caller, effective_roles
    from control.identity.models import Org

    row = session.scalar(select(Org).where(or_(Org.id == org, Org.name == org)))
    if row is None:
        raise NotFound(f"org {org!r}")
    roles = effective_roles([ADMIN_ROLE, OPERATOR_ROLE], operator_org=row.is_operator)
    return Caller(principal_id="cli", org_id=row.id, kind="service", roles=roles)


def cmd_policy_export(args: argparse.Namespace) -> int:
    from control.kit.db import make_engine, make_sessionmaker, unit_of_work
    from control.policyfile.service import export
    from control.views import OrgView

    settings = _settings()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            caller = _org_caller(session, args.org)
            document = export(OrgView(session, caller.org_id)).model_dump(mode="json")
    finally:
        engine.dispose()
    if args.format == "json":
        print(json.dumps(document, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_policy_apply(args: argparse.Namespace) -> int:
    from control.kit.db import make_engine, make_sessionmaker, unit_of_work
    from control.policyfile.service import apply, parse_document
    from control.views import OrgView

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    document = parse_document(text)
    settings = _settings()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            caller = _org_caller(session, args.org)
            result = apply(
                OrgView(session, caller.org_id), caller, document, settings, dry_run=args.dry_run
            )
    finally:
        engine.dispose()
    verb = "would" if result.dry_run else "did"
    for change in result.changes:
        detail = f" ({change.detail})" if change.detail else ""
        print(f"{change.op:<6} {change.kind:<14} {change.key}{detail}")
    if not result.changes:
        print("no changes: the org already matches the document")
    if result.revoked_subjects:
        print(
            f"{verb} revoke the tokens of {len(result.revoked_subjects)} principal(s): "
            + ", ".join(result.revoked_subjects)
        )
    print(
        f"policy_rev {result.policy_rev}"
        + (" (dry run: nothing changed)" if result.dry_run else "")
    )
    return 0


DEMO_STREAM = "run:demo-1"


def cmd_demo(args: argparse.Namespace) -> int:
    """A first policy in one command: an org with a query set, a stream, a grant rule, a user
    and a service with keys, and the requests to try them."""
    from sqlalchemy import select

    from control.errors import Conflict
    from control.identity import service as identity
    from control.identity.models import Org
    from control.identity.schemas import CredentialCreate, PrincipalCreate
    from control.kit.db import make_engine, make_sessionmaker, unit_of_work
    from control.policyfile.schemas import PolicyDocument
    from control.policyfile.service import apply
    from control.views import OrgView

    settings = _settings()
    pepper = settings.credential_pepper_bytes()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            if session.scalar(select(Org.id).where(Org.name == args.org)) is not None:
                raise Conflict(f"an org named {args.org!r} exists; name another with --org")
            org = identity.bootstrap_org(session, pepper, args.org)
            caller = _org_caller(session, org["org_id"])
            ada = identity.create_principal(
                session, caller, PrincipalCreate(kind="user", name="ada")
            )
            runtime = identity.create_principal(
                session, caller, PrincipalCreate(kind="service", name="runtime")
            )
            _, member_key = identity.issue_credential(
                session, pepper, caller, ada, CredentialCreate(name="demo")
            )
            _, service_key = identity.issue_credential(
                session, pepper, caller, runtime, CredentialCreate(name="demo")
            )
            document = PolicyDocument.model_validate(
                {
                    "query_sets": [
                        {
                            "name": "run_events",
                            "stream_kinds": ["run"],
                            "queries": [
                                "SELECT * FROM run_event_view",
                                "SELECT * FROM run_checkpoint_view",
                            ],
                            "description": "a run's events and checkpoints",
                        }
                    ],
                    "streams": [{"id": DEMO_STREAM, "owner_id": ada.id}],
                    "grant_rules": [
                        {
                            "effect": "allow",
                            "subjects": {"roles": ["member"]},
                            "streams": {"kind": "run", "relation": "org"},
                            "query_sets": ["run_events"],
                            "ops": ["subscribe"],
                            "description": "members read every run of the org",
                        }
                    ],
                }
            )
            apply(OrgView(session, org["org_id"]), caller, document, settings, dry_run=False)
    finally:
        engine.dispose()
    base = (args.base_url or settings.issuer).rstrip("/")
    values = {
        "BASE": base,
        "ADMIN": org["api_key"],
        "MEMBER": member_key,
        "SERVICE": service_key,
        "ADA": ada.id,
        "STREAM": DEMO_STREAM,
    }
    if args.shell:
        for name, value in values.items():
            print(f"export {name}='{value}'")
        return 0
    print(f"org {args.org} ({org['org_id']}): admin key, user ada (member), service runtime\n")
    for name, value in values.items():
        print(f"export {name}='{value}'")
    json_header = "-H 'Content-Type: application/json'"
    print(
        "\n# mint a sync token for ada\n"
        f'curl -s -X POST $BASE/api/sync/token -H "Authorization: Bearer $MEMBER" {json_header} '
        """-d '{"streams": ["'$STREAM'"]}'\n"""
        "\n# explain what a mint for ada would decide\n"
        f'curl -s -X POST $BASE/api/admin/explain -H "Authorization: Bearer $ADMIN" {json_header} '
        """-d '{"principal_id": "'$ADA'", "streams": ["'$STREAM'"]}'\n"""
        "\n# introspect a token (the runtime's view)\n"
        f'curl -s -X POST $BASE/api/sync/introspect -H "Authorization: Bearer $SERVICE" '
        f"""{json_header} -d '{{"token": "'$TOKEN'"}}'\n"""
        "\n# revoke every token ada holds\n"
        f'curl -s -X POST $BASE/api/admin/revocations -H "Authorization: Bearer $ADMIN" '
        f"""{json_header} -d '{{"kind": "subject", "value": "'$ADA'"}}'"""
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="control", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (PostgreSQL only; SQLite serves with one)",
    )
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="database schema").add_subparsers(required=True)
    db_upgrade = db.add_parser("upgrade", help="apply migrations")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    openapi = commands.add_parser("openapi", help="the OpenAPI spec").add_subparsers(required=True)
    for name, handler, text in (
        ("export", cmd_openapi_export, "write the spec generated from the route table"),
        ("check", cmd_openapi_check, "fail when the committed spec differs from the table"),
    ):
        sub = openapi.add_parser(name, help=text)
        sub.add_argument("--path", default=str(SPEC_PATH))
        sub.set_defaults(handler=handler)

    module = commands.add_parser("module", help="the SpacetimeDB module").add_subparsers(
        required=True
    )
    catalog = module.add_parser("catalog", help="its query-set catalog").add_subparsers(
        required=True
    )
    catalog_check = catalog.add_parser(
        "check", help="fail unless the module's catalog is the one the control plane enforces"
    )
    catalog_check.add_argument(
        "--module", default="module/src/catalog.json", help="the module's catalog.json"
    )
    catalog_check.add_argument(
        "--database",
        action="store_true",
        help="also fail when a query set defined in the database is one the catalog does not serve",
    )
    catalog_check.set_defaults(handler=cmd_module_catalog_check)
    module.add_parser(
        "identity", help="the Identity to configure the module with (control_plane_identity)"
    ).set_defaults(handler=cmd_module_identity)

    keys = commands.add_parser("keys", help="signing keys").add_subparsers(required=True)
    keys.add_parser("rotate", help="promote the pending key").set_defaults(handler=cmd_keys_rotate)

    admin = commands.add_parser("admin", help="administration").add_subparsers(required=True)
    bootstrap = admin.add_parser("bootstrap", help="create an org and its first admin key")
    bootstrap.add_argument("--org", required=True, help="the new org's name")
    bootstrap.set_defaults(handler=cmd_admin_bootstrap)

    token = commands.add_parser("token", help="sync tokens").add_subparsers(required=True)
    token_mint = token.add_parser("mint", help="mint a sync token for a principal (operators)")
    token_mint.add_argument("--principal", required=True)
    token_mint.add_argument("--stream", action="append", required=True)
    token_mint.add_argument("--query-set", action="append")
    token_mint.add_argument("--op", action="append", choices=["subscribe", "append", "checkpoint"])
    token_mint.add_argument("--ttl", type=int)
    token_mint.add_argument("--allow-partial", action="store_true")
    token_mint.set_defaults(handler=cmd_token_mint)

    demo = commands.add_parser("demo", help="create an example org, policy, user and service")
    demo.add_argument("--org", default="demo", help="the new org's name (default: demo)")
    demo.add_argument("--base-url", help="where the service listens (default: the issuer)")
    demo.add_argument("--shell", action="store_true", help="print only `export` lines")
    demo.set_defaults(handler=cmd_demo)

    policy = commands.add_parser("policy", help="grant policy as code").add_subparsers(
        required=True
    )
    export = policy.add_parser("export", help="write an org's policy as one document")
    export.add_argument("--org", required=True, help="the org's id or name")
    export.add_argument("--format", choices=["yaml", "json"], default="yaml")
    export.set_defaults(handler=cmd_policy_export)
    apply = policy.add_parser("apply", help="make an org's policy match a document")
    apply.add_argument("--org", required=True, help="the org's id or name")
    apply.add_argument("--dry-run", action="store_true", help="show the changes; make none")
    apply.add_argument("file", help="the document (YAML or JSON); - reads stdin")
    apply.set_defaults(handler=cmd_policy_apply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"control: configuration error: {problem}", file=sys.stderr)
        return 2
    except Exception as exc:
        from control.errors import ProblemError
        from control.keys.crypto import KeyDecryptionError

        if isinstance(exc, ProblemError):
            extras = f" {json.dumps(exc.extras)}" if exc.extras else ""
            print(f"control: {exc.code}: {exc.detail}{extras}", file=sys.stderr)
            return 1
        if isinstance(exc, KeyDecryptionError):
            print(f"control: {exc}", file=sys.stderr)
            return 1
        return _report(exc)
    return code


def _report(exc: Exception) -> int:
    """One line per problem for what a user can cause; anything else is a bug to show whole."""
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if isinstance(exc, ValidationError):
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "input"
            print(f"control: invalid_request: {where}: {error['msg']}", file=sys.stderr)
        return 1
    if isinstance(exc, ValueError | OSError):
        print(f"control: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, OperationalError | ProgrammingError):
        text = str(exc.orig).lower()
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            print(
                "control: the database has no schema yet (or an old one): run `control db upgrade`",
                file=sys.stderr,
            )
            return 1
        print(f"control: the database refused: {type(exc.orig).__name__}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
