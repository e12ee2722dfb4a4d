"""Which address a request comes from, for the login budgets.

The peer of the connection, unless that peer is a configured trusted proxy: then the
rightmost X-Forwarded-For hop that is not itself a trusted proxy. Hops to the left of that
were written by the client and prove nothing; from an untrusted peer the header is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from authsvc.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # one client, one key, whichever socket family it came in on
    return ip


def _trusted(ip: IPAddress, proxies: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[IPNetwork, ...]) -> str:
    nearest = _parse(peer or "")
    if nearest is None:
        return peer or "unknown"  # not an IP socket (a unix socket in tests, say)
    if not _trusted(nearest, proxies):
        return str(nearest)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for raw in reversed(hops):
        hop = _parse(raw)
        if hop is None:
            break  # a malformed hop: stop at the last address a trusted proxy vouched for
        nearest = hop
        if not _trusted(hop, proxies):
            break
    return str(nearest)
