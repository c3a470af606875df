"""Which webhook URLs may be called: no private, loopback, link-local, unique-local or cloud-metadata
addresses (server-side request forgery), unless the operator allow-lists them.

The check resolves the host once and returns the addresses it approved; the sender connects to one of
those, so a DNS answer cannot change between the check and the connection (rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from voicenote.errors import VoicenoteError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Metadata services that the generic ranges below do not all cover (AWS/GCP/Azure sit in 169.254/16;
# AWS's IPv6 one in fd00:ec2::/32; Alibaba in the shared 100.64/10 range; Oracle's 192.0.0.192).
METADATA_NETWORKS = [ipaddress.ip_network(n) for n in (
    "169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32",
)]
_EXTRA_BLOCKED = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "0.0.0.0/8", "fc00::/7", "64:ff9b::/96")]


class WebhookRefused(VoicenoteError):
    """The webhook URL may not be called; permanent, so it is not retried."""

    code = "webhook_refused"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # approved IPs, connect to one of these


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be called, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return blocked_reason(ip.ipv4_mapped)
    if any(ip in net for net in METADATA_NETWORKS):
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if any(ip in net for net in _EXTRA_BLOCKED):
        return "a reserved or shared address"
    return None


class AddressPolicy:
    """Checks webhook URLs; ``allow`` lists hostnames or CIDRs that are called even if private."""

    def __init__(self, allow: Iterable[str] = (), resolver: Resolver = system_resolver) -> None:
        self._allow_hosts: set[str] = set()
        self._allow_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                self._allow_nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._allow_hosts.add(entry.lower().rstrip("."))
        self._resolve = resolver

    def check(self, url: str) -> Target:
        """The approved target of ``url``, or WebhookRefused saying why not. Sends nothing to the target."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise WebhookRefused(f"webhook_url must be http or https, not {parts.scheme or 'missing'!r}: {url}")
        if not parts.hostname:
            raise WebhookRefused(f"webhook_url has no host: {url}")
        if parts.username or parts.password:
            raise WebhookRefused("webhook_url must not carry credentials; use the signature to authenticate")
        host = parts.hostname.lower().rstrip(".")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise WebhookRefused(f"webhook_url has an invalid port: {url}") from exc
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = self._resolve(host, port)
            except (OSError, UnicodeError) as exc:
                # Transient (DNS down) or permanent (no such name): the caller retries it like a failed attempt.
                raise OSError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if host not in self._allow_hosts:
            for address in addresses:
                ip = ipaddress.ip_address(address)
                reason = blocked_reason(ip)
                if reason and not any(ip in net for net in self._allow_nets):
                    shown = host if literal is not None else f"{host} (resolves to {address})"
                    raise WebhookRefused(
                        f"webhook_url host {shown} is {reason}; webhooks only go to public addresses "
                        "unless the operator allow-lists the host (webhooks.allow_hosts)")
        return Target(parts.scheme, host, port, tuple(addresses))
