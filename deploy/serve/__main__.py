"""`python -m deploy.serve`: the container entry point (the serving image has no torch,
so it cannot import the full `tuneline` CLI, whose other commands need it)."""

from __future__ import annotations

import argparse
import sys

from components.config import ConfigError, load_params
from deploy.serve.auth import InsecureBindError
from deploy.serve.runner import run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.serve", description=__doc__)
    parser.add_argument("--params", help="params.yaml to read (default: the project's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a param, e.g. --set serve.max_batch=16 (repeatable)")
    parser.add_argument("--bundle", help="serve this exported bundle folder, not the registry")
    parser.add_argument("--alias", default="champion", help="registry alias to follow")
    parser.add_argument("--cache-dir", help="where registry versions are downloaded")
    parser.add_argument("--host", help="bind address (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without $TUNELINE_API_TOKEN (only "
                             "where a network policy or proxy decides who gets in)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_server(params, bundle_dir=args.bundle, alias=args.alias, cache_dir=args.cache_dir,
                   host=args.host, port=args.port, log_level=args.log_level,
                   insecure=args.insecure)
    except InsecureBindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
