"""Token classification data: read words + BIO tags, quarantine bad sentences, split.

Input: JSONL with a list of words (`data.tokens_column`) and a list of BIO tags
(`data.tags_column`) per line, or a CoNLL-style column file (`.conll`: one word per line,
the word first and its tag last, a blank line between sentences, `-DOCSTART-` lines
skipped). Prepared folder: the same layout as for texts (`components.data.checks`), with rows
{"tokens", "tags", "text"} (text: the words joined by spaces, the row's identity for
duplicates and splits) and labels.json holding the tag set, "O" first, then B-/I- of
each entity type.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.config import DataConfig
from components.data.checks import (
    DUPLICATE,
    MALFORMED_ROW,
    MISSING_GROUP,
    CheckedDataset,
    _blank,
    _group_key,
    _jsonable,
    split_and_write,
)
from components.data.files import DataValidationError, input_format, read_jsonl_fields
from components.task_types.tagging import OUTSIDE, bio_error, entity_types, is_bio_tag, tag_type

# Quarantine reasons, in the order a sentence is checked.
INVALID_TOKENS = "invalid_tokens"      # not a list of non-empty strings
EMPTY_SENTENCE = "empty_sentence"
LENGTH_MISMATCH = "length_mismatch"    # not one tag per word
INVALID_BIO = "invalid_bio"            # not O/B-X/I-X, or I-X after O or another type
UNKNOWN_TAG = "unknown_tag"            # a tag outside the declared `data.labels`
CONFLICTING_TAGS = "conflicting_tags"  # the same words tagged two ways


def read_sentences(path: str | Path, cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """Yield {"tokens", "tags", "line"} (+ "group") per sentence of a JSONL or CoNLL file.

    Raises:
        DataValidationError: missing file, unsupported extension, or a missing column.
    """
    path = Path(path)
    fmt = input_format(path)
    if fmt == "conll":
        yield from _read_conll(path)
    elif fmt == "jsonl":
        yield from _read_jsonl(path, cfg)
    else:
        raise DataValidationError(f"{path}: token classification reads JSONL ("
                                  f"{cfg.tokens_column!r} + {cfg.tags_column!r}) or CoNLL "
                                  f"(.conll) files, not {fmt}")


def _read_jsonl(path: Path, cfg: DataConfig) -> Iterator[dict[str, Any]]:
    fields = {"tokens": cfg.tokens_column, "tags": cfg.tags_column}
    if cfg.group_column:
        fields["group"] = cfg.group_column
    return read_jsonl_fields(path, fields,
                             "data.tokens_column / data.tags_column / data.group_column")


def _read_conll(path: Path) -> Iterator[dict[str, Any]]:
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    bad: str | None = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if fields and fields[0] == "-DOCSTART-":
                continue
            if not fields:
                if tokens or bad:
                    yield _conll_sentence(tokens, tags, start, bad)
                tokens, tags, bad = [], [], None
                continue
            if not tokens and bad is None:
                start = lineno
            if len(fields) < 2:
                bad = bad or f"line {lineno} has one column (need a word and a tag)"
                continue
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens or bad:
        yield _conll_sentence(tokens, tags, start, bad)


def _conll_sentence(tokens: list[str], tags: list[str], line: int, bad: str | None
                    ) -> dict[str, Any]:
    if bad:
        return {"malformed": bad, "raw": " ".join(tokens), "line": line}
    return {"tokens": tokens, "tags": tags, "line": line}


def check_sentence(row: dict[str, Any], cfg: DataConfig) -> str | None:
    """The quarantine reason of one sentence, or None (duplicates are decided later)."""
    if "malformed" in row:
        return MALFORMED_ROW
    tokens, tags = row["tokens"], row["tags"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip()
                                               for t in tokens):
        return INVALID_TOKENS
    if not tokens:
        return EMPTY_SENTENCE
    if not isinstance(tags, list) or len(tags) != len(tokens):
        return LENGTH_MISMATCH
    if bio_error(tags) is not None:
        return INVALID_BIO
    if cfg.labels and any(t not in cfg.labels for t in tags if t != OUTSIDE):
        return UNKNOWN_TAG
    if cfg.group_column and _blank(row.get("group")):
        return MISSING_GROUP
    return None


def validate_sentences(rows: list[dict[str, Any]], cfg: DataConfig
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Accepted {"tokens", "tags", "text"(, "group")} rows and quarantined rows.

    Repeated sentences keep their first occurrence; the same words tagged two ways are all
    quarantined (which tagging is right cannot be known here).
    """
    checked = []
    tags_by_text: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for row in rows:
        reason = check_sentence(row, cfg)
        text = " ".join(t.strip() for t in row["tokens"]) if reason is None else ""
        checked.append((row, reason, text))
        if reason is None:
            tags_by_text[text].add(tuple(row["tags"]))
    accepted, quarantined, seen = [], [], set()
    for row, reason, text in checked:
        if reason is None and len(tags_by_text[text]) > 1:
            reason = CONFLICTING_TAGS
        elif reason is None and text in seen:
            reason = DUPLICATE
        if reason is None:
            seen.add(text)
            kept = {"tokens": [t.strip() for t in row["tokens"]], "tags": list(row["tags"]),
                    "text": text}
            if cfg.group_column:
                kept["group"] = _group_key(row["group"])
            accepted.append(kept)
        else:
            record = {"reason": reason, "line": row.get("line")}
            if "malformed" in row:
                record.update(detail=row["malformed"], raw=row["raw"])
            else:
                record.update(tokens=_jsonable(row["tokens"]), tags=_jsonable(row["tags"]))
                if reason == INVALID_BIO:
                    record["detail"] = bio_error(row["tags"])
            quarantined.append(record)
    return accepted, quarantined


def tag_set(types: list[str]) -> list[str]:
    """"O", then B-X and I-X of each entity type (the model's label map)."""
    return [OUTSIDE, *(f"{p}-{t}" for t in types for p in ("B", "I"))]


def check_token_dataset(input_path: str | Path, cfg: DataConfig) -> CheckedDataset:
    """Read and validate a token-classification file without writing anything.

    Raises:
        DataValidationError: no sentences, too many bad ones, or no entity at all.
    """
    rows = list(read_sentences(input_path, cfg))
    if not rows:
        raise DataValidationError(f"{input_path}: no sentences")
    accepted, quarantined = validate_sentences(rows, cfg)
    declared = [tag_type(t) for t in cfg.labels if is_bio_tag(t) and t != OUTSIDE]
    types = sorted(set(declared)) if cfg.labels else entity_types(
        [t for r in accepted for t in r["tags"]])
    checked = CheckedDataset(len(rows), accepted, quarantined, tag_set(types))
    bad_fraction = len(quarantined) / len(rows)
    if bad_fraction > cfg.max_bad_fraction:
        raise DataValidationError(
            f"{input_path}: {len(quarantined)} of {len(rows)} sentences are bad "
            f"({bad_fraction:.1%} > data.max_bad_fraction={cfg.max_bad_fraction:.1%}); "
            f"reasons: {checked.reasons}. Nothing was written.")
    if not types:
        raise DataValidationError(f"{input_path}: no entity (B-/I- tag) among the valid "
                                  "sentences: nothing to learn")
    return checked


def prepare_token_dataset(input_path: str | Path, out_dir: str | Path, cfg: DataConfig
                          ) -> dict[str, Any]:
    """Validate, quarantine, split and write the prepared folder (atomically).

    Returns:
        The report (also report.json): sentences in / kept, quarantine reasons, the tag set,
        split sizes, entity counts per type and split, near-duplicates across splits.
    """
    checked = check_token_dataset(input_path, cfg)
    return split_and_write(input_path, out_dir, checked, cfg, {
        "tokens": lambda rows: sum(len(r["tokens"]) for r in rows),
        "entity_counts": lambda rows: dict(sorted(Counter(
            t[2:] for r in rows for t in r["tags"] if t.startswith("B-")).items()))},
        task="token_classification")


def load_token_split(prepared_dir: str | Path, split: str
                     ) -> tuple[list[list[str]], list[list[int]]]:
    """Word lists and tag ids of one prepared split."""
    from components.data.files import load_label_map

    ids = {name: i for i, name in enumerate(load_label_map(prepared_dir))}
    words, tags = [], []
    with open(Path(prepared_dir) / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            words.append(row["tokens"])
            tags.append([ids[t] for t in row["tags"]])
    return words, tags
