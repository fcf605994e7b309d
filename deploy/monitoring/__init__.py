"""Prometheus alert rules for the serving app, rendered from params.yaml `monitoring:`."""
