"""Which address a request comes from, for the login budgets.

The peer of the connection, unless that peer is a configured trusted proxy: then the
rightmost X-Forwarded-For hop that is not itself a trusted proxy. Hops to the left of that
were written by the client and prove nothing; from an untrusted peer the header is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

from authsvc.settings import IPNetwork
from authsvc.settings.networks import in_networks, parse_ip


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[IPNetwork, ...]) -> str:
    nearest = parse_ip(peer or "")
    if nearest is None:
        return peer or "unknown"  # not an IP socket (a unix socket in tests, say)
    if not in_networks(nearest, proxies):
        return str(nearest)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for raw in reversed(hops):
        hop = parse_ip(raw)
        if hop is None:
            break  # a malformed hop: stop at the last address a trusted proxy vouched for
        nearest = hop
        if not in_networks(hop, proxies):
            break
    return str(nearest)
