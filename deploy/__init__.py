"""Deployment: the serving app (ONNX Runtime + tokenizers, no torch) and its manifests."""
