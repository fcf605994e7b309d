"""uvicorn's httptools protocol with a deadline on a request's headers.

uvicorn closes a keep-alive connection that stays silent `timeout_keep_alive` seconds
after a response, but it never arms that timer on a new connection, and any byte
received disarms it. A client that connects and sends nothing (or trickles a header
byte now and then) therefore holds its connection forever (Kludex/uvicorn#1192), and
with `limit_concurrency` a few hundred such sockets would turn every later request,
the kubelet's probes included, into a 503. Here a connection, new or idle after its
last response, is closed unless a request's headers are complete within
`timeout_keep_alive` seconds. The body then falls under the app's own deadline
(serve.request_timeout_s, deploy/serve/predict.py).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers come too late."""

    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers_timer()

    def on_headers_complete(self) -> None:
        self._disarm_headers_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer: nothing is running or pipelined, and the
        # next request has to arrive in full as well, not just start to.
        if self.timeout_keep_alive_task is not None:
            self._arm_headers_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_headers_timer()
        super().connection_lost(exc)

    def _arm_headers_timer(self) -> None:
        self._disarm_headers_timer()
        self._headers_timer = self.loop.call_later(self.timeout_keep_alive, self._headers_late)

    def _disarm_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if not self.transport.is_closing():
            self.transport.close()
