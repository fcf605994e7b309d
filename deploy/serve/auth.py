"""Who may call the server: the bearer token, and where it may listen without one.

The token comes from $TUNELINE_API_TOKEN and guards POST /v1/predict only (probes and
metrics stay open for the cluster). Listening beyond loopback without a token needs an
explicit `--insecure`; otherwise the server refuses to start.
"""

from __future__ import annotations

import ipaddress
import os

TOKEN_ENV = "TUNELINE_API_TOKEN"


class InsecureBindError(ValueError):
    """Asked to listen beyond loopback with no token and without --insecure."""


def token_from_env() -> str:
    """$TUNELINE_API_TOKEN without surrounding whitespace (a Secret made from a file often
    ends in a newline, which no client sends); "" when unset or blank."""
    return os.environ.get(TOKEN_ENV, "").strip()


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # any other name may resolve to a routable address
        return False


def check_bind(host: str, token: str, insecure: bool) -> None:
    """Refuse to serve predictions to the network unauthenticated unless told to.

    Raises:
        InsecureBindError: `host` is not loopback, `token` is empty and not `insecure`.
    """
    if is_loopback(host) or token or insecure:
        return
    raise InsecureBindError(
        f"refusing to listen on {host} without a token: anyone who reaches the port could "
        f"use the model. Set {TOKEN_ENV} (clients then send 'Authorization: Bearer "
        "<token>'), or pass --insecure if something else already decides who gets in "
        "(a network policy, an authenticating proxy), or bind 127.0.0.1.")
