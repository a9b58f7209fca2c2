"""The host names the API answers to, so a web page cannot reach it through DNS rebinding.

A page on evil.example that re-points its own name at 127.0.0.1 can make a browser send
requests to an API on loopback; they still carry `Host: evil.example`, and are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ALLOWED_HOSTS_VARIABLE = "TICKVAULT_API_ALLOWED_HOSTS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _as_host(address: str) -> str:
    """A Host header carries an IPv6 address in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def allowed_hosts(api_host: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """TICKVAULT_API_ALLOWED_HOSTS (comma-separated), else loopback and `api_host`.

    `*` allows any host, and `*.example.com` any name under example.com.
    """
    configured = environ.get(ALLOWED_HOSTS_VARIABLE, "")
    names = [name.strip() for name in configured.split(",") if name.strip()]
    return names or list(dict.fromkeys([*LOOPBACK_HOSTS, _as_host(api_host)]))
