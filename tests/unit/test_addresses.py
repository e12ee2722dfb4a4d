"""The client address the login budgets see: the peer, or behind trusted proxies the rightmost
hop of X-Forwarded-For that is not one of them."""

from __future__ import annotations

import ipaddress

import pytest

from authsvc.http.addresses import client_address


def net(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "proxies", "expected"),
    [
        ("127.0.0.1", ["1.2.3.4"], (), "127.0.0.1"),
        ("198.51.100.7", ["1.2.3.4"], net("127.0.0.1/32"), "198.51.100.7"),
        ("127.0.0.1", [], net("127.0.0.1/32"), "127.0.0.1"),
        ("127.0.0.1", [" 1.1.1.1 ,2.2.2.2 "], net("127.0.0.1/32"), "2.2.2.2"),
        # IPv6, written in any form, comes out in one canonical form.
        ("::1", ["2001:DB8:0:0::7"], net("::1/128"), "2001:db8::7"),
        ("2001:db8:0::1", ["1.2.3.4"], (), "2001:db8::1"),
        ("::1", ["1.2.3.4"], net("127.0.0.1/32"), "::1"),  # an IPv4 list does not trust IPv6 peers
        # IPv4-mapped IPv6 is the IPv4 client it carries, as peer, proxy and hop.
        ("::ffff:203.0.113.5", ["1.2.3.4"], (), "203.0.113.5"),
        ("::ffff:127.0.0.1", ["1.2.3.4"], net("127.0.0.1/32"), "1.2.3.4"),
        ("127.0.0.1", ["::ffff:198.51.100.9"], net("127.0.0.1/32"), "198.51.100.9"),
        # Several headers are one list, in order.
        ("127.0.0.1", ["1.1.1.1, 2.2.2.2", "3.3.3.3"], net("127.0.0.1/32"), "3.3.3.3"),
        ("127.0.0.1", ["1.1.1.1, 2.2.2.2", "10.0.0.3"], net("127.0.0.1/32", "10.0.0.0/8"), "2.2.2.2"),
        # A chain of trusted proxies only: the farthest one.
        ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], net("127.0.0.1/32", "10.0.0.0/8"), "10.0.0.1"),
        # Junk ends the chain at the last address a trusted proxy wrote.
        ("127.0.0.1", ["1.1.1.1, garbage"], net("127.0.0.1/32"), "127.0.0.1"),
        ("127.0.0.1", ["1.1.1.1, garbage, 10.0.0.4"], net("127.0.0.1/32", "10.0.0.0/8"), "10.0.0.4"),
        ("127.0.0.1", ["garbage, 2.2.2.2"], net("127.0.0.1/32"), "2.2.2.2"),
        ("127.0.0.1", [""], net("127.0.0.1/32"), "127.0.0.1"),
        (None, ["1.2.3.4"], net("127.0.0.1/32"), "unknown"),
    ],
)
def test_client_address(peer, forwarded_for, proxies, expected):
    assert client_address(peer, forwarded_for, proxies) == expected
