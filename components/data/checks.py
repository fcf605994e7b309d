"""Validate, quarantine and split labeled text into the prepared folder.

Prepared folder layout (written by `streaming.prepare_dataset`, read by every later stage):
    train.jsonl / validation.jsonl / test.jsonl   one {"text": str, "label": str} per line
    labels.json                                   {"labels": [name, ...]}  index = class id
    report.json                                   rows_in, rows_ok, quarantined, class counts,
                                                  near-duplicate pairs across splits
    quarantine.jsonl                              every rejected row with its reason
With `data.group_column`, a row also keeps its "group", and the split is decided by the
group, so every row of one group (a customer, a thread) lands in the same split.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import DataConfig
from components.data.chunks import ColumnChunk
from components.data.files import (
    SPLITS,
    DataValidationError,
    md5_file,
    write_jsonl,
)
from components.io import atomic_dir

# Quarantine reasons, in the order a row is checked.
TEXT_NOT_STRING = "text_not_string"
EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
OVERLONG_TEXT = "overlong_text"
DUPLICATE = "duplicate"
CONFLICTING_LABELS = "conflicting_labels"
MALFORMED_ROW = "malformed_row"
MISSING_GROUP = "missing_group"


# ---------------------------------------------------------------------------- validation


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace folded to one space: the identity of a text."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_row(row: dict[str, Any], cfg: DataConfig) -> tuple[str | None, str, str]:
    """Return (reason or None, normalized text, label) for one raw row.

    Duplicates and conflicting labels need the whole file, so they are decided later.
    """
    if "malformed" in row:
        return MALFORMED_ROW, "", ""
    text, label = row["text"], row["label"]
    if not _is_missing(text) and not isinstance(text, str):
        return TEXT_NOT_STRING, "", ""
    norm = normalize_text(text) if isinstance(text, str) else ""
    if len(norm) < cfg.min_chars:
        return EMPTY_TEXT, norm, ""
    if _is_missing(label) or not str(label).strip():
        return MISSING_LABEL, norm, ""
    # Integral floats come from typed columns holding numbers: 1.0 means label "1".
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    label = str(label).strip()
    if cfg.labels and label not in cfg.labels:
        return UNKNOWN_LABEL, norm, label
    if len(norm) > cfg.max_chars:
        if cfg.overlong == "reject":
            return OVERLONG_TEXT, norm, label
        norm = norm[: cfg.max_chars].rstrip()
    return None, norm, label


@dataclass
class CheckedChunk:
    """One chunk checked row by row or column by column; lists hold one item a row."""

    reasons: np.ndarray            # str: "" for a row that passed, else its reason
    norms: list[str]               # normalized (and maybe truncated) text of a passed row
    labels: list[str]              # stripped label of a passed row
    groups: list[str] | None       # stripped group of a passed row (with a group column)
    raw: dict[str, list[Any]]      # "text", "label"(, "group") as read
    lines: np.ndarray              # line number of each row (0: unknown)
    rows: Callable[[list[int]], list[dict[str, Any]]]  # the raw rows at these positions


def check_rows(chunk: list[dict[str, Any]], cfg: DataConfig) -> CheckedChunk:
    """`check_row` (and the group check) on every row of a chunk of row dicts."""
    reasons, norms, labels = [], [], []
    groups: list[str] | None = [] if cfg.group_column else None
    for row in chunk:
        reason, norm, label = check_row(row, cfg)
        if reason is None and cfg.group_column and _blank(row.get("group")):
            reason = MISSING_GROUP
        reasons.append(reason or "")
        norms.append(norm)
        labels.append(label)
        if groups is not None:
            groups.append(_group_key(row["group"]) if reason is None else "")
    raw = {key: [row.get(key) for row in chunk]
           for key in ("text", "label", *(("group",) if cfg.group_column else ()))}
    return CheckedChunk(np.array(reasons, dtype=object), norms, labels, groups, raw,
                        np.array([row["line"] or 0 for row in chunk], dtype=np.int64),
                        lambda at: [chunk[i] for i in at])


# Where an ASCII text differs from its normalized form: whitespace other than single spaces
# between words (Python's whitespace, str.split's, among ASCII characters).
_NOT_NORMALIZED = r"[\x09-\x0d\x1c-\x1f]|  |^ | $"


def check_columns(chunk: ColumnChunk, cfg: DataConfig) -> CheckedChunk:
    """`check_rows` of a ColumnChunk's rows, computed column by column: the same result.

    Arrow finds the texts that are already normalized (ASCII, so NFC leaves them as they
    are, with single spaces between words and none at the ends): most of them, in one
    pass; `normalize_text` does the others.
    """
    import pyarrow.compute as pc

    text = chunk.columns["text"]
    raw = {key: column.to_pylist() for key, column in chunk.columns.items()}
    filled = pc.fill_null(text, "")
    redo = pc.or_(pc.invert(pc.string_is_ascii(filled)),
                  pc.match_substring_regex(filled, _NOT_NORMALIZED))
    norms = list(raw["text"])
    for i in np.flatnonzero(redo.to_numpy(zero_copy_only=False)
                            | text.is_null().to_numpy(zero_copy_only=False)).tolist():
        norms[i] = normalize_text(norms[i]) if norms[i] is not None else ""
    labels = [label.strip() if label is not None else "" for label in raw["label"]]
    length = np.fromiter(map(len, norms), dtype=np.int64, count=len(norms))
    unknown = (np.fromiter((label not in cfg.labels for label in labels), dtype=bool,
                           count=len(labels)) if cfg.labels else np.zeros(len(labels), bool))
    overlong = length > cfg.max_chars
    reasons = np.select(
        [length < cfg.min_chars, np.array([not label for label in labels], dtype=bool),
         unknown, overlong & (cfg.overlong == "reject")],
        [EMPTY_TEXT, MISSING_LABEL, UNKNOWN_LABEL, OVERLONG_TEXT], "").astype(object)
    groups = None
    if cfg.group_column:
        groups = [g.strip() if g is not None else "" for g in raw["group"]]
        blank = np.array([not g for g in groups], dtype=bool)
        reasons[(reasons == "") & blank] = MISSING_GROUP
    for i in np.flatnonzero(overlong & (reasons == "")).tolist():
        norms[i] = norms[i][: cfg.max_chars].rstrip()
    lines = np.arange(chunk.first_line, chunk.first_line + len(chunk), dtype=np.int64)
    return CheckedChunk(reasons, norms, labels, groups, raw, lines,
                        lambda at: _rows_at(raw, lines, at))


def _rows_at(raw: dict[str, list[Any]], lines: np.ndarray, at: list[int]
             ) -> list[dict[str, Any]]:
    return [{**{key: values[i] for key, values in raw.items()}, "line": int(lines[i])}
            for i in at]


def _blank(value: Any) -> bool:
    return _is_missing(value) or not str(value).strip()


def _group_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _quarantine_record(row: dict[str, Any], reason: str) -> dict[str, Any]:
    record = {"reason": reason, "line": row.get("line")}
    if "malformed" in row:
        record.update(detail=row["malformed"], raw=row["raw"])
    else:
        record.update(text=_jsonable(row["text"]), label=_jsonable(row["label"]))
        if "group" in row:
            record["group"] = _jsonable(row["group"])
    return record


def _jsonable(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return repr(value)


# ---------------------------------------------------------------------------- splitting


def assign_split(key: str, cfg: DataConfig) -> str:
    """Split of a row, decided by a salted hash of its key (the text, or its group).

    The hash maps the key to a point in [0, 1); the same key always lands in the same
    split, so appending rows never moves an existing row.
    """
    return split_assigner(cfg)(key)


def split_assigner(cfg: DataConfig) -> Callable[[str], str]:
    """`assign_split` for many keys: the salted hash state is made once."""
    salted = hashlib.sha256(f"{cfg.split_salt}\x00".encode())
    test, validation = cfg.test_fraction, cfg.test_fraction + cfg.validation_fraction

    def assign(key: str) -> str:
        h = salted.copy()
        h.update(key.encode())
        u = int.from_bytes(h.digest()[:8], "big") / 2**64
        return "test" if u < test else "validation" if u < validation else "train"

    return assign


def split_indices(keys: list[str], cfg: DataConfig) -> np.ndarray:
    """Position in SPLITS of `assign_split` of each key: the same hash, its first 8 bytes
    read by numpy for all keys at once (int / 2**64 and float(int) / 2**64 are the same
    correctly rounded number)."""
    salted = hashlib.sha256(f"{cfg.split_salt}\x00".encode())

    def digest(key: str) -> bytes:
        h = salted.copy()
        h.update(key.encode())
        return h.digest()

    u = np.frombuffer(b"".join(map(digest, keys)), dtype=">u8")[::4].astype(np.float64) / 2**64
    test, validation = cfg.test_fraction, cfg.test_fraction + cfg.validation_fraction
    return np.where(u < test, SPLITS.index("test"), np.where(
        u < validation, SPLITS.index("validation"), SPLITS.index("train"))).astype(np.int8)


def split_stable(rows: list[dict[str, str]], cfg: DataConfig) -> dict[str, list[dict[str, str]]]:
    """Group accepted rows by `assign_split` of their group (or text), keeping input order."""
    out: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    assign = split_assigner(cfg)
    for row in rows:
        out[assign(row.get("group", row["text"]))].append(row)
    return out


# ---------------------------------------------------------------------------- prepare


@dataclass
class CheckedDataset:
    """An input file read and validated, not yet written anywhere."""

    rows_in: int
    accepted: list[dict[str, str]]
    quarantined: list[dict[str, Any]]
    labels: list[str]

    @property
    def rows_ok(self) -> int:
        return len(self.accepted)

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(q["reason"] for q in self.quarantined).most_common())


def split_and_write(input_path: str | Path, out_dir: str | Path, checked: CheckedDataset,
                    cfg: DataConfig, per_split: dict[str, Callable[[list[dict]], Any]],
                    task: str | None = None) -> dict[str, Any]:
    """Split checked rows and write the prepared folder in one rename; return the report.

    `per_split` adds the task's own counts: report[key][split] = fn(rows of that split).

    Raises:
        DataValidationError: the train split is empty.
    """
    from components.data.near_dup import cross_split_near_duplicates

    splits = split_stable(checked.accepted, cfg)
    if not splits["train"]:
        raise DataValidationError(f"{input_path}: the train split is empty")
    report = {
        **({"task": task} if task else {}),
        "input": Path(input_path).name,
        "input_md5": md5_file(Path(input_path)),
        "rows_in": checked.rows_in,
        "rows_ok": len(checked.accepted),
        "quarantined": checked.reasons,
        "bad_fraction": round(len(checked.quarantined) / checked.rows_in, 6),
        "labels": checked.labels,
        "split_sizes": {s: len(splits[s]) for s in SPLITS},
        **{key: {s: fn(splits[s]) for s in SPLITS} for key, fn in per_split.items()},
        "group_column": cfg.group_column,
        "groups": ({s: len({r["group"] for r in splits[s]}) for s in SPLITS}
                   if cfg.group_column else None),
        "near_duplicates": cross_split_near_duplicates(
            {s: [r["text"] for r in splits[s]] for s in SPLITS}, cfg.near_duplicate_jaccard),
    }
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            write_jsonl(tmp / f"{split}.jsonl", splits[split])
        write_jsonl(tmp / "quarantine.jsonl", checked.quarantined)
        (tmp / "labels.json").write_text(json.dumps({"labels": checked.labels}, indent=2) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


