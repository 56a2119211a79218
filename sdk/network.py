"""Who may reach a cluster: by default only the address this client reaches AWS from.

The security group admits the scheduler's ports from these CIDRs only. A client on a private network reaches AWS
through NAT, so its public address is asked of AWS's own ``checkip`` service; a client that reaches the EC2
endpoint over loopback or a private network (a VPN, a VM in the same VPC) is admitted by that source address.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from sdk.errors import SdkError

CHECKIP_URL = "https://checkip.amazonaws.com"


def source_address(endpoint_url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The local address the kernel would use to reach the endpoint (no packet is sent)."""
    parts = urlsplit(endpoint_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        return ipaddress.ip_address(probe.getsockname()[0])


def _public_address() -> str:
    try:
        response = httpx.get(CHECKIP_URL, timeout=5)
        response.raise_for_status()
        return str(ipaddress.ip_address(response.text.strip()))
    except (httpx.HTTPError, ValueError) as exc:
        raise SdkError(f"could not learn this machine's public address from {CHECKIP_URL} ({type(exc).__name__}); "
                       "pass allow_ingress_from=['<your address>/32']") from None


def client_cidrs(allow_ingress_from: list[str] | None, endpoint_url: str) -> list[str]:
    """The CIDRs the cluster admits: the caller's choice, or this client's own address as a /32 (/128)."""
    if allow_ingress_from:
        return list(allow_ingress_from)
    local = source_address(endpoint_url)
    endpoint_host = urlsplit(endpoint_url).hostname or ""
    try:
        endpoint_is_private = ipaddress.ip_address(socket.gethostbyname(endpoint_host)).is_private
    except (OSError, ValueError):
        endpoint_is_private = False
    address = str(local) if local.is_loopback or endpoint_is_private or not local.is_private else _public_address()
    bits = 32 if ipaddress.ip_address(address).version == 4 else 128
    return [f"{address}/{bits}"]
