"""The demo corpus is real and deterministic."""

from __future__ import annotations

from components.config import DemoConfig
from components.data.demo import build_demo_corpus


def test_demo_corpus_is_large_varied_and_deterministic(tmp_path):
    meta = build_demo_corpus(tmp_path / "a", DemoConfig())
    build_demo_corpus(tmp_path / "b", DemoConfig())
    assert len(meta["families"]) >= 6
    assert meta["labeled_rows"] >= 1500
    assert min(meta["families"].values()) >= 100
    for name in ("labeled.jsonl", "unlabeled.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    docs = (tmp_path / "a" / "unlabeled.txt").read_text().splitlines()
    assert len(docs) >= meta["labeled_rows"]
    assert any("socket" in d for d in docs)  # real standard-library prose
