"""Token classification: BIO data and its quarantine, entities from docstring markup,
windowed word tagging with character offsets, and the whole chain on a tiny model (train,
evaluate, export, gate against a champion, register, serve entities)."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from components.config import load_params
from components.data.files import DataValidationError
from tests.conftest import tiny_overrides

FILL = ["the", "a", "of", "to", "read", "write", "file", "open", "close", "value", "return",
        "list"]
CODE = ["foo", "bar", "baz"]
MULTIBYTE = "Zürich naïve café foo 日本語 bar — “baz” the value"


def tagged_rows(n: int = 300, seed: int = 0) -> list[dict]:
    """Sentences where the words foo / bar / baz are CODE entities: learnable in seconds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 14)):
            if rng.random() < 0.2:
                tokens.append(rng.choice(CODE))
                tags.append("B-CODE")
            else:
                tokens.append(rng.choice(FILL))
                tags.append("O")
        rows.append({"tokens": [*tokens, str(i)], "tags": [*tags, "O"]})
    return rows


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------- BIO + metrics


def test_bio_entities_and_entity_report():
    from components.task_types.tagging import bio_entities, bio_error, entity_report

    tags = ["B-CODE", "I-CODE", "O", "I-URL", "I-URL", "B-PEP", "B-PEP"]
    assert bio_entities(tags) == [("CODE", 0, 2), ("URL", 3, 5), ("PEP", 5, 6), ("PEP", 6, 7)]
    assert bio_error(["O", "I-CODE"]) == "tag 1 'I-CODE' follows 'O'"
    assert bio_error(["B-CODE", "I-URL"]) is not None
    assert bio_error(["B-CODE", "I-CODE", "O"]) is None

    gold = [["B-CODE", "I-CODE", "O", "B-URL"], ["O", "B-CODE"]]
    pred = [["B-CODE", "O", "O", "B-URL"], ["O", "B-CODE"]]  # one CODE span cut short
    report = entity_report(gold, pred, ["CODE", "URL"])
    assert report["per_type"]["CODE"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                          "support": 2}
    assert report["per_type"]["URL"]["f1"] == 1.0
    assert report["entity_f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(0.75)
    assert report["accuracy"] == pytest.approx(5 / 6)


def test_paired_bootstrap_over_sentences_sees_a_real_drop():
    from components.config import NoiseConfig
    from components.evaluate.stats import paired_bootstrap
    from components.task_types import task_type
    from components.task_types.tagging import sentence_counts

    token = task_type("token_classification")

    def bootstrap_sentences(a, b, cfg):
        return paired_bootstrap(a, b, token.metrics_of, token.metrics, cfg)

    gold = [["O", "B-CODE", "O"], ["B-URL", "I-URL"], ["O", "O"]] * 40
    worse = [["O", "O", "O"], ["B-URL", "I-URL"], ["O", "O"]] * 40  # misses every CODE
    good = np.array([sentence_counts(g, g, ["CODE", "URL"]) for g in gold])
    bad = np.array([sentence_counts(g, p, ["CODE", "URL"]) for g, p in zip(gold, worse,
                                                                           strict=True)])
    ci = bootstrap_sentences(bad, good, NoiseConfig(resamples=200))
    assert ci["entity_f1"][1] < 0 and ci["macro_f1"][1] < 0     # a significant drop
    assert bootstrap_sentences(good, good, NoiseConfig())["entity_f1"] == (0.0, 0.0)


# ---------------------------------------------------------------------------- data


def test_jsonl_and_conll_are_validated_quarantined_and_split(tmp_path):
    from components.data.checks import assign_split
    from components.task_types.token_data import prepare_token_dataset

    good = tagged_rows(40)
    bad = [{"tokens": ["a", "b"], "tags": ["O"]},                      # length mismatch
           {"tokens": ["a", "foo"], "tags": ["O", "I-CODE"]},          # I-X after O
           {"tokens": ["x", "foo"], "tags": ["B-URL", "I-CODE"]},      # I-X after another type
           {"tokens": [], "tags": []},                                 # empty sentence
           {"tokens": ["a", "foo"], "tags": ["O", "B-NAME"]},          # not in data.labels
           good[0]]                                                    # duplicate
    path = tmp_path / "ner.jsonl"
    write_jsonl(path, good + bad)
    cfg = load_params(overrides=["data.labels=[B-CODE, I-CODE]"]).data
    report = prepare_token_dataset(path, tmp_path / "prepared", cfg)
    assert report["quarantined"] == {"invalid_bio": 2, "length_mismatch": 1,
                                     "empty_sentence": 1, "unknown_tag": 1, "duplicate": 1}
    assert report["rows_ok"] == 40 and report["labels"] == ["O", "B-CODE", "I-CODE"]
    saved = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert saved["quarantined"] == report["quarantined"]
    for split in ("train", "validation", "test"):
        for line in (tmp_path / "prepared" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert assign_split(" ".join(row["tokens"]), cfg) == split

    conll = tmp_path / "ner.conll"
    blocks = ["-DOCSTART- O\n"] + ["\n".join(f"{t} NN {g}" for t, g in
                                             zip(r["tokens"], r["tags"], strict=True)) + "\n"
                                   for r in good]
    conll.write_text("\n".join(blocks) + "\nlonely\n")
    report = prepare_token_dataset(conll, tmp_path / "from-conll", load_params().data)
    assert report["rows_ok"] == 40 and report["quarantined"] == {"malformed_row": 1}
    rows = [json.loads(line) for name in ("train", "validation", "test")
            for line in (tmp_path / "from-conll" / f"{name}.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in rows) == sorted(" ".join(r["tokens"]) for r in good)


def test_sequence_task_refuses_a_conll_file(tmp_path):
    from components.data.streaming import check_dataset

    path = tmp_path / "x.conll"
    path.write_text("foo B-CODE\n")
    with pytest.raises(DataValidationError, match="task.type=token_classification"):
        check_dataset(path, load_params().data)


def test_docstring_markup_becomes_entities_without_markup():
    from components.data.demo import bio_words, markup_entities

    text, spans = markup_entities(
        "Return ``os.path.join(a)`` like :func:`~os.stat`, see PEP 8 and "
        "https://docs.python.org/3/. Mode 'rb' or `sep`.")
    assert text == ("Return os.path.join(a) like os.stat, see PEP 8 and "
                    "https://docs.python.org/3/. Mode rb or sep.")
    assert [(text[a:b], kind) for a, b, kind in spans] == [
        ("os.path.join(a)", "CODE"), ("os.stat", "REF"), ("PEP 8", "PEP"),
        ("https://docs.python.org/3/", "URL"), ("rb", "CODE"), ("sep", "CODE")]
    words, tags = bio_words(text, spans)
    assert words[:3] == ["Return", "os", "."] and tags[:3] == ["O", "B-CODE", "I-CODE"]
    assert words[-2:] == ["sep", "."] and tags[-2:] == ["B-CODE", "O"]


# ---------------------------------------------------------------------------- offsets


def test_windows_give_character_offsets_of_multibyte_text(tokenizer_dir):
    """A 'model' that tags the word piece `foo` as CODE: every foo of a text longer than
    one window is found once, with offsets that slice the original (multi-byte) text."""
    from tokenizers import Tokenizer

    from components.task_types.tagging import entities_of, tag_texts, window_tokenizer

    base = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    foo = base.token_to_id("foo")
    labels = ["O", "B-CODE", "I-CODE"]

    def run(feeds):
        logits = np.zeros((*feeds["input_ids"].shape, 3), dtype=np.float32)
        logits[..., 0] = 1.0
        logits[..., 1] = np.where(feeds["input_ids"] == foo, 5.0, 0.0)
        return logits

    text = " ".join([MULTIBYTE] * 6)  # ~90 sub-tokens: several windows of 16
    tagger = window_tokenizer(base, max_length=16, stride=4)
    assert len(tagger.encode(text).overflowing) >= 5
    tagged = tag_texts(tagger, run, [text, "nothing"], batch_size=4)
    found = entities_of(text, tagged[0], labels)
    starts = [i for i in range(len(text)) if text.startswith("foo", i)]
    assert [e["start"] for e in found] == starts
    assert all(e["text"] == "foo" == text[e["start"]: e["end"]] for e in found)
    assert entities_of("nothing", tagged[1], labels) == []
    with pytest.raises(ValueError, match="task.stride"):
        window_tokenizer(base, max_length=16, stride=14)


# ---------------------------------------------------------------------------- the chain


@pytest.fixture()
def token_sets(tmp_path, tiny_backbone_dir) -> list[str]:
    """Overrides for the tiny model on `tagged_rows`, with windows of 16 sub-tokens."""
    write_jsonl(tmp_path / "raw.jsonl", tagged_rows())
    return tiny_overrides(tmp_path, tiny_backbone_dir) + [
        "task.type=token_classification", "model.max_length=16", "task.stride=4",
        "finetune.max_steps=30", "export.latency_repeats=3", "gate.max_latency_p95_ms=5000"]


@pytest.mark.slow
def test_token_chain_trains_gates_registers_and_serves_offsets(token_sets):
    from fastapi.testclient import TestClient

    from components.stages.evaluate import evaluate
    from components.stages.export import export
    from components.stages.finetune import finetune
    from components.stages.gate import gate
    from components.stages.ingest import ingest
    from components.stages.prepare import prepare
    from components.stages.register import register
    from deploy.serve.app import create_app

    params = load_params(overrides=token_sets)
    for stage in (ingest, prepare, finetune):
        stage(params)
    report = evaluate(params).result
    assert report["entity_f1"] > 0.9
    parity = export(params).result
    assert parity["max_logit_diff"] < 1e-3 and parity["int8_entity_agreement"] > 0.9
    verdict = gate(params).result
    assert verdict["passed"] and verdict["first_model"], verdict["reasons"]
    assert {r["name"] for r in verdict["rules"]} >= {"min.entity_f1", "min.accuracy",
                                                     "int8_confident_flips"}
    assert register(params).result["version"] == "1"
    # Judged again against the champion it now is: paired over the same sentences.
    again = gate(params, force=True).result
    rule = next(r for r in again["rules"] if r["name"] == "vs_champion.entity_f1")
    assert rule["value"] == 0.0 and rule["passed"] and rule["n"] == report["n"]

    with TestClient(create_app(params, cache_dir=params.paths.model.parent / "cache")) as client:
        deadline = time.time() + 30
        while client.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        long_text = " ".join([MULTIBYTE] * 5)
        resp = client.post("/v1/predict", json={"texts": [MULTIBYTE, long_text, "the value"]})
    assert resp.status_code == 200, resp.text
    short, long_, none = (p["entities"] for p in resp.json()["predictions"])
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in short] == [
        ("CODE", "foo", 18, 21), ("CODE", "bar", 26, 29), ("CODE", "baz", 33, 36)]
    assert MULTIBYTE[18:21] == "foo"
    assert [e["text"] for e in long_] == ["foo", "bar", "baz"] * 5
    assert all(long_text[e["start"]: e["end"]] == e["text"] for e in long_)
    assert none == []


@pytest.mark.slow
@pytest.mark.parametrize("sets", [["peft.method=lora"], ["finetune.strategy=mezo"]])
def test_token_model_trains_with_lora_and_zeroth_order(token_sets, sets):
    from components.model.modeling import load_trained
    from components.stages.ingest import ingest
    from components.stages.prepare import prepare
    from components.train.finetune import train

    params = load_params(overrides=[*token_sets, *sets, "finetune.max_steps=6",
                                    "finetune.eval_every=3"])
    ingest(params)
    prepare(params)
    metrics = train(params, params.paths.prepared, params.paths.model)
    assert metrics["steps"] == 6 and np.isfinite(metrics["train_loss_final"])
    trained = load_trained(params.paths.model)
    assert trained.meta["task"] == "token_classification"
    assert type(trained.model).__name__ != "BertForSequenceClassification"



@pytest.mark.integration
@pytest.mark.slow
def test_tuneline_run_token_classification_on_the_demo_corpus(tmp_path, tiny_backbone_dir,
                                                             monkeypatch):
    """`tuneline run --set task.type=token_classification` in a fresh copy of the project:
    the demo corpus's entities, every stage up to the registry, then served."""
    from fastapi.testclient import TestClient

    from deploy.serve.app import create_app
    from tests.project_support import clone_project, run_summary, tiny_sets

    repo = clone_project(tmp_path / "repo")
    # An absolute store: MLflow caches its stores by URI, and this process may already hold
    # one for the relative `sqlite:///mlflow.db`, opened from another folder.
    sets = [*tiny_sets(tiny_backbone_dir), "task.type=token_classification",
            "gate.min_metrics.entity_f1=0.0",
            f"registry.tracking_uri=sqlite:///{repo / 'mlflow.db'}"]
    summary = run_summary(repo, *[a for s in sets for a in ("--set", s)])
    assert summary["version"] == "1", summary
    monkeypatch.chdir(repo)
    prepared = json.loads((repo / "data" / "prepared" / "report.json").read_text())
    assert prepared["task"] == "token_classification"
    assert {"CODE", "PEP", "REF", "URL"} <= set(prepared["entity_counts"]["train"])
    report = json.loads((repo / "artifacts" / "eval" / "report.json").read_text())
    assert {"entity_f1", "per_type", "accuracy"} <= set(report)
    verdict = json.loads((repo / "artifacts" / "gate" / "verdict.json").read_text())
    assert verdict["passed"] and "min.entity_f1" in {r["name"] for r in verdict["rules"]}

    params = load_params(repo / "params.yaml", sets)
    with TestClient(create_app(params, cache_dir=tmp_path / "cache")) as client:
        deadline = time.time() + 30
        while client.get("/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        resp = client.post("/v1/predict", json={"texts": [MULTIBYTE]})
    assert resp.status_code == 200, resp.text
    prediction = resp.json()["predictions"][0]
    assert set(prediction) == {"entities"}
    assert all(MULTIBYTE[e["start"]: e["end"]] == e["text"] for e in prediction["entities"])
