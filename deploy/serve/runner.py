"""Start the serving app under uvicorn (used by `tuneline serve` and `python -m deploy.serve`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from components.config import Params
from deploy.serve.auth import check_bind, is_loopback, token_from_env

log = logging.getLogger("tuneline.serve")


def run_server(params: Params, *, bundle_dir: str | Path | None = None, alias: str = "champion",
               cache_dir: str | Path | None = None, host: str | None = None,
               port: int | None = None, log_level: str = "info", insecure: bool = False) -> None:
    """Serve until interrupted. Host and port default to `serve.host` / `serve.port`.

    Access logs are off: one log line per request costs more CPU than batch-1 inference.

    Raises:
        InsecureBindError: a non-loopback `host` with neither $TUNELINE_API_TOKEN nor
            `insecure` (checked before anything is loaded or bound).
    """
    import uvicorn

    from deploy.serve.app import create_app
    from deploy.serve.protocol import HeaderDeadlineProtocol

    cfg = params.serve
    host = host or cfg.host
    token = token_from_env()
    check_bind(host, token, insecure)

    # An inference thread coming back from ONNX Runtime needs the GIL to hand its batch on;
    # while the event loop is busy it waits up to this interval, with a core idle.
    sys.setswitchinterval(cfg.gil_switch_interval_ms / 1e3)

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if not is_loopback(host) and not token:
        log.warning("listening on %s without a token (--insecure): /v1/predict is open to "
                    "whoever reaches the port", host)
    app = create_app(params, bundle_dir=bundle_dir, alias=alias, cache_dir=cache_dir,
                     api_token=token)
    # limit_concurrency: once this many connections (or requests) are open, uvicorn answers
    # a plain 503 itself, before the app sees the request, so the memory of requests being
    # read and parsed stays bounded whatever clients do. Below it the app sheds load on its
    # own terms (serve.max_queued_texts: a JSON 503 with Retry-After). Silent connections
    # are closed after timeout_keep_alive_s (HeaderDeadlineProtocol), so they cannot use
    # the limit up.
    uvicorn.run(app, host=host, port=port or cfg.port, log_level=log_level, access_log=False,
                http=HeaderDeadlineProtocol, limit_concurrency=cfg.limit_concurrency,
                timeout_keep_alive=cfg.timeout_keep_alive_s)
