"""Where sluice may connect: never to link-local or cloud-metadata addresses unless a target allows it.

Upstream URLs come only from config and policy, never from a request; this check runs when the
config is loaded and again on the addresses a host name resolves to at start-up (an SSRF through a
DNS name that points at 169.254.169.254 is the classic cloud credential theft).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.com",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com", "100.100.100.200",
})
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_EC2_V6 = ipaddress.ip_address("fd00:ec2::254")
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


def forbidden_address(host: str) -> bool:
    """Whether a literal address or host name is link-local or a cloud-metadata endpoint."""
    h = host.strip("[]").lower().rstrip(".")
    if h in METADATA_HOSTS:
        return True
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in _LINK_LOCAL_V4 or ip == _EC2_V6 or (isinstance(ip, ipaddress.IPv6Address) and ip in _LINK_LOCAL_V6)


def refused_url(url: str, *, resolve: bool = False) -> str | None:
    """Why a URL may not be used (a message naming no address), or None when it may."""
    host = urlsplit(url).hostname or ""
    if forbidden_address(host):
        return "it points at a link-local or cloud-metadata address"
    if resolve:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return None  # unresolvable now: the transport reports it as unreachable
        if any(forbidden_address(str(info[4][0])) for info in infos):
            return "its host name resolves to a link-local or cloud-metadata address"
    return None
