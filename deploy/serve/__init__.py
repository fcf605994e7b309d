"""Serving: FastAPI + ONNX Runtime + tokenizers, micro-batching, hot reload. No torch."""

from deploy.serve.app import build_source, create_app, readiness
from deploy.serve.runner import run_server

__all__ = ["build_source", "create_app", "readiness", "run_server"]
