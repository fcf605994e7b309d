"""ModelHolder: swaps on a new version, keeps the old model on failure, backs off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.serve.holder import LocalBundleSource, ModelHolder
from deploy.serve.metrics import ServeMetrics
from tests.conftest import TINY_LABELS
from tests.serve_support import export_tiny_bundle


class FolderSource:
    """Versions are sub-folders of a root; `wanted` says which one to serve."""

    description = "test folders"

    def __init__(self, root: Path) -> None:
        self.root, self.wanted, self.fetches = root, None, []

    def wanted_version(self) -> str | None:
        return self.wanted

    def fetch(self, version: str) -> Path:
        self.fetches.append(version)
        return self.root / version


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("holder")
    export_tiny_bundle(root / "1", tokenizer_dir, TINY_LABELS, seed=1)
    shutil.copytree(root / "1", root / "2")
    (root / "2" / "model.int8.onnx").write_bytes(b"not an onnx model")  # sha256 mismatch
    return root


def test_swap_failure_and_backoff(versions):
    source = FolderSource(versions)
    metrics = ServeMetrics()
    holder = ModelHolder(source, threads=1, metrics=metrics, retry_base_s=3600)
    assert holder.refresh() is False and holder.current is None
    assert "no such version yet" in holder.status.last_error

    source.wanted = "1"
    assert holder.refresh() is True
    assert holder.current.version == "1" and holder.status.last_error is None
    assert holder.refresh() is False  # unchanged: nothing fetched again
    assert source.fetches == ["1"]

    source.wanted = "2"
    assert holder.refresh() is False
    assert holder.current.version == "1"  # the old model keeps serving
    assert holder.status.failed_version == "2" and "sha256" in holder.status.last_error
    assert metrics.reload_failing._value.get() == 1
    assert holder.refresh() is False
    assert source.fetches == ["1", "2"], "a broken version is not retried before its backoff"

    holder.status.retry_at = 0  # backoff elapsed
    holder.refresh()
    assert source.fetches == ["1", "2", "2"] and holder.status.failures_in_row == 2

    source.wanted = "1"  # rolled back to the served version: healthy again on next success
    assert holder.refresh() is False and holder.current.version == "1"


def test_local_source_reloads_when_the_folder_is_re_exported(versions, tmp_path,
                                                             tokenizer_dir):
    folder = tmp_path / "export"
    shutil.copytree(versions / "1", folder)
    holder = ModelHolder(LocalBundleSource(folder), threads=1)
    assert holder.refresh() is True
    first = holder.current.version
    export_tiny_bundle(folder, tokenizer_dir, TINY_LABELS, seed=9)
    assert holder.refresh() is True
    assert holder.current.version != first
