"""Which network targets the service may fetch a trusted issuer's documents from.

Registering an issuer makes this service send requests on an admin's behalf, and presenting an
ID token naming that issuer makes it do so on an anonymous caller's behalf. Without limits that
is a way into the service's own network (cloud metadata at 169.254.169.254, databases on
private addresses, admin ports on loopback). So every target is checked twice: when an issuer
is registered (literal addresses and names that resolve), and again at fetch time on the
addresses the name resolves to then, since a name may change what it resolves to. The fetch
then connects to the address that was checked, not to whatever a second lookup returns.

In prod, targets must be `https` and public; in dev, `http` and loopback are allowed so a
local identity provider works out of the box. `federation_allow_private_networks` lifts the
address rule (for identity providers inside a private network) but never the `https` rule.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from enum import Enum

import httpx

from control.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The NAT64 well-known prefix embeds an IPv4 address in its last 32 bits (RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What a DNS name may hold once httpx has lowercased it and encoded IDNA labels: a host written
# with percent escapes or other punctuation names nothing a resolver could find.
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


class AddressKind(Enum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    # Private, link-local, shared (CGNAT), documentation, reserved: anything not global.
    PRIVATE = "private"
    # Unspecified and multicast: no identity provider lives there, and 0.0.0.0 reaches the
    # local host in disguise; refused whatever the settings say.
    NEVER = "never"


def address_kind(ip: IPAddress) -> AddressKind:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
        if ip.is_site_local:
            return AddressKind.PRIVATE
    if ip.is_unspecified or ip.is_multicast:
        return AddressKind.NEVER
    if ip.is_loopback:
        return AddressKind.LOOPBACK
    if ip.is_global:
        return AddressKind.PUBLIC
    return AddressKind.PRIVATE


class TargetRefused(Exception):
    """The URL may not be fetched; the message says why, for the admin who registers it."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the checks, and the addresses its host resolved to."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name or address literal, without brackets
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class NetworkPolicy:
    require_https: bool
    allow_loopback: bool
    allow_private: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> NetworkPolicy:
        prod = settings.env == "prod"
        allowed = settings.federation_allow_private_networks
        return cls(require_https=prod, allow_loopback=allowed or not prod, allow_private=allowed)

    @classmethod
    def strict(cls) -> NetworkPolicy:
        return cls(require_https=True, allow_loopback=False, allow_private=False)

    def parse(self, url: str) -> Target:
        """Check the URL's form: scheme, no credentials, a host; literal addresses too."""
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii")
        except (httpx.InvalidURL, UnicodeError, ValueError):
            raise TargetRefused("is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise TargetRefused("must be an http or https URL")
        if self.require_https and parsed.scheme != "https":
            raise TargetRefused("must be an https URL")
        if parsed.userinfo:
            raise TargetRefused("must not contain credentials")
        if not host:
            raise TargetRefused("has no host")
        # httpx keeps any number as the port, and the resolver would wrap 99999 to 34463.
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise TargetRefused("has a port outside 1-65535")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = _literal(host)
        if literal is None and not set(host) <= _NAME_CHARACTERS:
            raise TargetRefused("has a host that is neither a DNS name nor an IP address")
        addresses = () if literal is None else (literal,)
        for address in addresses:
            self.check_address(address)
        return Target(parsed, host, port, addresses)

    def check_address(self, ip: IPAddress) -> None:
        kind = address_kind(ip)
        if kind is AddressKind.PUBLIC:
            return
        if kind is AddressKind.LOOPBACK and self.allow_loopback:
            return
        if kind is AddressKind.PRIVATE and self.allow_private:
            return
        hint = (
            ""
            if kind is AddressKind.NEVER
            else " (set CONTROL_FEDERATION_ALLOW_PRIVATE_NETWORKS to allow it)"
        )
        raise TargetRefused(f"names a {kind.value} network address, which is refused{hint}")

    def resolve(self, target: Target) -> Target:
        """The target with every address its host resolves to now, each one checked: a name
        with one refused address among public ones is refused, as a resolver may pick it."""
        if target.addresses:
            return target
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Unresolved(f"{target.host} does not resolve: {exc}") from None
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unresolved(f"{target.host} does not resolve")
        for address in addresses:
            self.check_address(address)
        return Target(target.url, target.host, target.port, tuple(addresses))

    def check_registration(self, url: str) -> None:
        """At registration: the URL's form, and its addresses if its name resolves now.

        A name that does not resolve yet is accepted (an identity provider may be set up after
        it is trusted); the fetch checks it again, as it does every time.
        """
        target = self.parse(url)
        try:
            self.resolve(target)
        except Unresolved:
            return


class Unresolved(Exception):
    """The host name does not resolve (now)."""


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
