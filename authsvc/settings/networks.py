"""IP addresses as the settings' networks compare them: one canonical form per client."""

from __future__ import annotations

import ipaddress

from authsvc.settings.parse import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """The address written in `text`, an IPv4-mapped IPv6 one as its IPv4 address (one client,
    one key, whichever socket family it came in on); None when it is not an address."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
