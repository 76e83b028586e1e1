"""The query-set catalog the SpacetimeDB module declares (`module/src/catalog.json`), as the
control plane reads it: a copy ships in this package (`catalog.json` beside this file), and
`control module catalog check` holds the two equal. A deployment whose module declares its own
catalog names that file in `CONTROL_QUERY_SET_CATALOG` (`catalog_for`); unset, the control plane
enforces the shipped copy.

The catalog says which views each `name@version` opens, for which stream kinds. The control plane
accepts a query-set definition only when the catalog serves it (`definition_problem`), so a query
set the module would not serve is never granted; the module opens views by the same entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from control.grants import QUERY_SET_NAME_PATTERN, STREAM_KIND_PATTERN
from control.settings import Settings, SettingsError

CATALOG_PATH = Path(__file__).with_name("catalog.json")
# The module's own declaration, where a checkout keeps it (for `control module catalog check`).
MODULE_CATALOG = Path("module/src/catalog.json")

_KIND = re.compile(rf"^{STREAM_KIND_PATTERN}\Z")
_REF = re.compile(rf"^({QUERY_SET_NAME_PATTERN})@([1-9][0-9]{{0,8}})\Z")
_VIEW = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")


class CatalogError(ValueError):
    """The catalog document does not have the catalog's shape."""


@dataclass(frozen=True)
class Entry:
    views: tuple[str, ...]
    stream_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    name: str
    revision: int
    views: dict[str, str]  # view -> table
    query_sets: dict[str, Entry]  # name@version -> entry

    @property
    def label(self) -> str:
        """How a refusal names the catalog: `control-sync-module@1`."""
        return f"{self.name}@{self.revision}"

    def entry(self, name: str, version: int) -> Entry | None:
        return self.query_sets.get(f"{name}@{version}")

    def serves(self, ref: str, kind: str) -> bool:
        entry = self.query_sets.get(ref)
        return entry is not None and kind in entry.stream_kinds

    def opens(self, ref: str, kind: str, view: str) -> bool:
        entry = self.query_sets.get(ref)
        return entry is not None and kind in entry.stream_kinds and view in entry.views

    def versions(self, name: str) -> list[int]:
        found = (_REF.match(ref) for ref in self.query_sets)
        return sorted(int(m.group(2)) for m in found if m is not None and m.group(1) == name)

    def definition_problem(
        self, name: str, version: int, stream_kinds: list[str], selected: set[str]
    ) -> str | None:
        """Why the catalog does not serve this query-set definition, or None when it does: it
        must serve `name@version`, for every kind named, and its queries may select (`selected`:
        the tables or views they read) only views that version opens. Fewer is allowed: the
        queries are what clients subscribe to, and the grant opens every view of the entry."""
        ref = f"{name}@{version}"
        entry = self.query_sets.get(ref)
        if entry is None:
            served = ", ".join(f"{name}@{v}" for v in self.versions(name)) or "no version of it"
            return f"the module's catalog {self.label} does not serve {ref} (it serves {served})"
        other_kinds = sorted(set(stream_kinds) - set(entry.stream_kinds))
        if other_kinds:
            return (
                f"the module's catalog {self.label} serves {ref} for "
                f"{', '.join(entry.stream_kinds)} streams only, not {', '.join(other_kinds)}"
            )
        outside = sorted(selected - set(entry.views))
        if outside:
            return (
                f"the module's catalog {self.label} has {ref} open "
                f"{', '.join(sorted(entry.views))} only, not {', '.join(outside)}"
            )
        return None


def _strings(value: Any, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{what} must be a non-empty list")
    if not all(isinstance(item, str) and pattern.match(item) for item in value):
        raise CatalogError(f"{what} holds something that is not a valid name")
    if len(set(value)) != len(value):
        raise CatalogError(f"{what} has duplicates")
    return tuple(value)


def parse_catalog(document: Any) -> Catalog:
    """Check a catalog document's shape (the rules of the module's `parseCatalog`)."""
    if not isinstance(document, dict):
        raise CatalogError("the catalog is not a JSON object")
    name = document.get("catalog")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise CatalogError("`catalog` must be a name of 1 to 64 characters")
    revision = document.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise CatalogError("`revision` must be a positive integer")
    raw_views = document.get("views")
    if not isinstance(raw_views, dict) or not raw_views:
        raise CatalogError("`views` must be a non-empty object")
    views: dict[str, str] = {}
    for view, spec in raw_views.items():
        table = spec.get("table") if isinstance(spec, dict) else None
        if not _VIEW.match(view) or not isinstance(table, str) or not _VIEW.match(table):
            raise CatalogError(f"view {view!r} must be a name naming its table")
        views[view] = table
    raw_sets = document.get("query_sets")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise CatalogError("`query_sets` must be a non-empty object")
    query_sets: dict[str, Entry] = {}
    for ref, spec in raw_sets.items():
        if not _REF.match(ref):
            raise CatalogError(f"{ref!r} is not `name@version`")
        if not isinstance(spec, dict):
            raise CatalogError(f"{ref} must be an object")
        entry_views = _strings(spec.get("views"), _VIEW, f"{ref} views")
        unknown = sorted(set(entry_views) - set(views))
        if unknown:
            raise CatalogError(
                f"{ref} opens {', '.join(unknown)}, which the catalog does not declare"
            )
        kinds = _strings(spec.get("stream_kinds"), _KIND, f"{ref} stream_kinds")
        query_sets[ref] = Entry(entry_views, kinds)
    return Catalog(name, revision, views, query_sets)


def read_catalog(path: Path) -> Catalog:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path} cannot be read as JSON: {exc}") from None
    return parse_catalog(document)


@cache
def shipped_catalog() -> Catalog:
    """The reference module's catalog, shipped in the package."""
    return read_catalog(CATALOG_PATH)


def catalog_for(settings: Settings) -> Catalog:
    """The catalog this control plane enforces: the file `CONTROL_QUERY_SET_CATALOG` names (the
    catalog of the module the deployment runs), or the shipped one when it is unset."""
    path = settings.query_set_catalog
    return shipped_catalog() if path is None else _configured_catalog(path.resolve())


@cache
def _configured_catalog(path: Path) -> Catalog:
    """Read once per path and process. A file that cannot be read, or is not a catalog, is a
    `SettingsError` of one line naming the setting, never its value (as for every setting);
    `control serve` and every replica's start read it, so a request never meets the error."""
    setting = "CONTROL_QUERY_SET_CATALOG"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{setting} cannot be read: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SettingsError(f"{setting} is not JSON{where}") from None
    try:
        return parse_catalog(document)
    except CatalogError as exc:
        raise SettingsError(f"{setting} is not a query-set catalog: {exc}") from None
