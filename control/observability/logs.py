"""Log lines: readable text (the default) or one JSON object per line (`CONTROL_LOG_FORMAT=json`).

Every line written while a request is served carries its request id, route, and, once known,
its org and principal. Security events (`security_event`) are lines of their own on the
`control.security` logger, with an `event` field; the request line is on `control.access`.

What may appear in a line is decided where it is written: ids, codes, counts, display prefixes.
Never a token, a key, a credential, a secret, a raw request path (a key pasted into a URL would
be one) or a problem's free-text detail.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from control.observability.context import current

ACCESS = logging.getLogger("control.access")
SECURITY = logging.getLogger("control.security")

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request's context and the
    record's own structured `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current()
        if context is not None:
            line["request_id"] = context.request_id
            line["route"] = context.route
            if context.org_id is not None:
                line["org_id"] = context.org_id
                line["principal_id"] = context.principal_id
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(log_format: Literal["text", "json"], level: str) -> None:
    """Send every logger's records to stderr in `log_format`, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings are lines too: in JSON mode, objects like every other line.
    logging.captureWarnings(True)


def _text(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)


def security_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line for one security event: `event` names it, `fields` say what it was about (ids
    and codes only; callers never pass a secret)."""
    if not SECURITY.isEnabledFor(level):
        return
    fields = {"event": event} | {key: value for key, value in fields.items() if value is not None}
    SECURITY.log(level, "%s %s", event, _text(fields | {"event": None}), extra={"fields": fields})


def access(
    level: int,
    *,
    request_id: str,
    method: str,
    route: str,
    status: int,
    seconds: float,
    problem: str,
    org_id: str | None,
    principal_id: str | None,
) -> None:
    """The one line of a finished request."""
    fields: dict[str, Any] = {
        "method": method,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    if problem:
        fields["problem"] = problem
    who = f" org={org_id} principal={principal_id}" if org_id is not None else ""
    ACCESS.log(
        level,
        "request %s %s %s -> %d%s in %.1f ms%s",
        request_id,
        method,
        route,
        status,
        f" {problem}" if problem else "",
        seconds * 1000,
        who,
        extra={"fields": fields},
    )
