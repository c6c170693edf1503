"""Which address a coordinator puts in the service registry for workers to dial.

Django-free. Nothing here sends a packet: the hostname lookup reads /etc/hosts or DNS, and
connecting a UDP socket only asks the kernel which source address its routing table would use.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from controlplane.core.config import Config

logger = logging.getLogger(__name__)

# Any address that routes off this machine will do: a UDP connect() sends nothing. This one is
# in TEST-NET-2 (RFC 5737), so even a misbehaving stack could never reach a real host with it.
_ROUTE_PROBE = ("198.51.100.1", 9)


def is_wildcard(host: str) -> bool:
    """True for the "all interfaces" spellings of a bind address."""
    return host.strip().strip("[]") in ("", "0.0.0.0", "::", "*")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def non_loopback_address() -> str | None:
    """This machine's primary non-loopback IPv4 address, or None when it has none.

    First what the hostname resolves to (what an operator sees in /etc/hosts or DNS); when
    that is loopback (Debian's 127.0.1.1, containers' `127.0.0.1 hostname`), the source
    address of the default route.
    """
    try:
        by_name = socket.gethostbyname(socket.gethostname())
    except OSError:
        by_name = ""
    if by_name and not is_loopback(by_name) and not is_wildcard(by_name):
        return by_name
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_ROUTE_PROBE)
            routed = str(probe.getsockname()[0])
    except OSError:  # no route at all: an isolated machine
        return None
    return None if is_loopback(routed) or is_wildcard(routed) else routed


def advertised_host(config: Config) -> str:
    """coordinator.advertise when configured; otherwise an address workers can dial.

    Bound to one address: that address (the hostname may resolve elsewhere, e.g. 127.0.1.1,
    where nothing listens). Bound to all interfaces: this machine's non-loopback address,
    since 127.0.0.1 or an unresolvable container hostname would strand remote workers.
    """
    coordinator = config.coordinator
    if config.sources.get("coordinator.advertise", "default") != "default":
        return coordinator.advertise
    if not is_wildcard(coordinator.host):
        return coordinator.host
    found = non_loopback_address()
    if found is None:
        logger.warning(
            "coordinator bound to all interfaces but this machine has no non-loopback address; "
            "advertising %s (set coordinator.advertise to choose)",
            coordinator.advertise,
        )
        return coordinator.advertise
    return found
