"""Start the serving app under uvicorn (used by `tuneline serve` and `python -m deploy.serve`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from components.config import Params


def run_server(params: Params, *, bundle_dir: str | Path | None = None, alias: str = "champion",
               cache_dir: str | Path | None = None, host: str | None = None,
               port: int | None = None, log_level: str = "info") -> None:
    """Serve until interrupted. Host and port default to `serve.host` / `serve.port`.

    Access logs are off: one log line per request costs more CPU than batch-1 inference.
    """
    import uvicorn

    from deploy.serve.app import create_app

    # An inference thread coming back from ONNX Runtime needs the GIL to hand its batch on;
    # while the event loop is busy it waits up to this interval, with a core idle.
    sys.setswitchinterval(params.serve.gil_switch_interval_ms / 1e3)

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = create_app(params, bundle_dir=bundle_dir, alias=alias, cache_dir=cache_dir)
    uvicorn.run(app, host=host or params.serve.host, port=port or params.serve.port,
                log_level=log_level, access_log=False)
