"""Load, validate, quarantine and split labeled text; read prepared splits back.

Prepared folder layout (written by `prepare_dataset`, read by every later stage):
    train.jsonl / validation.jsonl / test.jsonl   one {"text": str, "label": str} per line
    labels.json                                   {"labels": [name, ...]}  index = class id
    report.json                                   rows_in, rows_ok, quarantined, class counts
    quarantine.jsonl                              every rejected row with its reason
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.config import DataConfig
from components.io import atomic_dir

SPLITS = ("train", "validation", "test")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}

# Quarantine reasons, in the order a row is checked.
TEXT_NOT_STRING = "text_not_string"
EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
OVERLONG_TEXT = "overlong_text"
DUPLICATE = "duplicate"
CONFLICTING_LABELS = "conflicting_labels"
MALFORMED_ROW = "malformed_row"


class DataValidationError(ValueError):
    """The input cannot be prepared: missing columns, too many bad rows, too few classes."""


# ---------------------------------------------------------------------------- reading


def read_rows(path: str | Path, text_column: str, label_column: str) -> Iterator[dict[str, Any]]:
    """Yield {"text", "label", "line"} per input row; the format comes from the extension.

    Values keep their original types (a JSONL number stays a number) so validation can
    tell a non-string text apart. A JSONL line that is not a JSON object is yielded with
    key "malformed" and quarantined later.

    Raises:
        DataValidationError: unknown extension, missing file or missing column.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"input not found: {path}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataValidationError(
            f"{path}: unsupported extension {path.suffix!r}; use one of {sorted(FORMATS)}")
    if fmt == "jsonl":
        yield from _read_jsonl(path, text_column, label_column)
        return
    import pandas as pd

    if fmt == "csv":
        # keep_default_na=False: an empty cell is "", not NaN, and "NA" stays a word.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        frame = pd.read_parquet(path)
    _require_columns(path, list(frame.columns), text_column, label_column)
    texts = frame[text_column].tolist()
    labels = frame[label_column].tolist()
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        yield {"text": text, "label": label, "line": i + 2 if fmt == "csv" else i + 1}


def _read_jsonl(path: Path, text_column: str, label_column: str) -> Iterator[dict[str, Any]]:
    seen_columns = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield {"malformed": f"invalid JSON ({exc.msg})", "raw": line.rstrip("\n"),
                       "line": lineno}
                continue
            if not isinstance(obj, dict):
                yield {"malformed": "not a JSON object", "raw": line.rstrip("\n"),
                       "line": lineno}
                continue
            if not seen_columns:
                _require_columns(path, list(obj), text_column, label_column)
                seen_columns = True
            yield {"text": obj.get(text_column), "label": obj.get(label_column),
                   "line": lineno}


def _require_columns(path: Path, columns: list[str], text_column: str, label_column: str):
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; found {columns}. Set data.text_column / "
            "data.label_column in params.yaml to the names your file uses.")


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


def validate_rows(rows: list[dict[str, Any]], cfg: DataConfig
                  ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Split raw rows into accepted {"text","label"} rows and quarantined rows with reasons.

    Exact duplicates (same text, same label) keep their first occurrence. A text seen with
    more than one label is ambiguous: every row of it is quarantined, since which label is
    right cannot be known here.
    """
    checked = []
    labels_by_text: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        reason, norm, label = check_row(row, cfg)
        checked.append((row, reason, norm, label))
        if reason is None:
            labels_by_text[norm].add(label)

    accepted: list[dict[str, str]] = []
    quarantined: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row, reason, norm, label in checked:
        if reason is None and len(labels_by_text[norm]) > 1:
            reason = CONFLICTING_LABELS
        elif reason is None and norm in seen:
            reason = DUPLICATE
        if reason is None:
            seen.add(norm)
            accepted.append({"text": norm, "label": label})
        else:
            quarantined.append(_quarantine_record(row, reason))
    return accepted, quarantined


def _quarantine_record(row: dict[str, Any], reason: str) -> dict[str, Any]:
    record = {"reason": reason, "line": row.get("line")}
    if "malformed" in row:
        record.update(detail=row["malformed"], raw=row["raw"])
    else:
        record.update(text=_jsonable(row["text"]), label=_jsonable(row["label"]))
    return record


def _jsonable(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return repr(value)


# ---------------------------------------------------------------------------- splitting


def assign_split(text: str, cfg: DataConfig) -> str:
    """Split of a normalized text, decided by a salted hash of the text alone.

    The hash maps the text to a point in [0, 1); the same text always lands in the same
    split, so appending rows never moves an existing row.
    """
    digest = hashlib.sha256(f"{cfg.split_salt}\x00{text}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.validation_fraction:
        return "validation"
    return "train"


def split_stable(rows: list[dict[str, str]], cfg: DataConfig) -> dict[str, list[dict[str, str]]]:
    """Group accepted rows by `assign_split`, keeping input order within a split."""
    out: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for row in rows:
        out[assign_split(row["text"], cfg)].append(row)
    return out


# ---------------------------------------------------------------------------- prepare


def prepare_dataset(input_path: str | Path, out_dir: str | Path, cfg: DataConfig
                    ) -> dict[str, Any]:
    """Validate `input_path`, quarantine bad rows, split, and write the prepared folder.

    All outputs are written into a temp folder that replaces `out_dir` in one rename, so a
    failure leaves any earlier prepared folder as it was.

    Returns:
        The report (also written as report.json).

    Raises:
        DataValidationError: missing columns, no usable rows, fewer than two classes, or a
            quarantined fraction above `cfg.max_bad_fraction`.
    """
    rows = list(read_rows(input_path, cfg.text_column, cfg.label_column))
    if not rows:
        raise DataValidationError(f"{input_path}: no rows")
    accepted, quarantined = validate_rows(rows, cfg)
    reasons = dict(Counter(q["reason"] for q in quarantined).most_common())
    bad_fraction = len(quarantined) / len(rows)
    if bad_fraction > cfg.max_bad_fraction:
        raise DataValidationError(
            f"{input_path}: {len(quarantined)} of {len(rows)} rows are bad "
            f"({bad_fraction:.1%} > data.max_bad_fraction={cfg.max_bad_fraction:.1%}); "
            f"reasons: {reasons}. Nothing was written.")
    labels = list(cfg.labels) or sorted({r["label"] for r in accepted})
    present = {r["label"] for r in accepted}
    if len(present) < 2:
        raise DataValidationError(
            f"{input_path}: need at least two classes among the valid rows, "
            f"found {sorted(present)}")
    splits = split_stable(accepted, cfg)
    if not splits["train"]:
        raise DataValidationError(f"{input_path}: the train split is empty")
    report = {
        "input": str(input_path),
        "rows_in": len(rows),
        "rows_ok": len(accepted),
        "quarantined": reasons,
        "bad_fraction": round(bad_fraction, 6),
        "labels": labels,
        "split_sizes": {s: len(splits[s]) for s in SPLITS},
        "class_counts": {s: dict(sorted(Counter(r["label"] for r in splits[s]).items()))
                         for s in SPLITS},
    }
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            _write_jsonl(tmp / f"{split}.jsonl", splits[split])
        _write_jsonl(tmp / "quarantine.jsonl", quarantined)
        (tmp / "labels.json").write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- reading back


def load_label_map(prepared_dir: str | Path) -> list[str]:
    """Ordered class names; the position of a name is its class id."""
    return list(json.loads((Path(prepared_dir) / "labels.json").read_text())["labels"])


def load_split(prepared_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Texts and integer label ids of one prepared split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    labels = {name: i for i, name in enumerate(load_label_map(prepared_dir))}
    texts, ids = [], []
    with open(Path(prepared_dir) / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(row["text"])
            ids.append(labels[row["label"]])
    return texts, ids


def load_unlabeled(path: str | Path) -> list[str]:
    """Unlabeled documents for MLM pretraining: .txt (one per line) or .jsonl ({"text"})."""
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"unlabeled text not found: {path}")
    with open(path, encoding="utf-8") as fh:
        if path.suffix.lower() in (".jsonl", ".json"):
            docs = [json.loads(line).get("text") for line in fh if line.strip()]
        else:
            docs = [line.rstrip("\n") for line in fh]
    return [d.strip() for d in docs if isinstance(d, str) and d.strip()]


# ---------------------------------------------------------------------------- versions


def data_version(path: str | Path) -> str:
    """Content hash of a file or folder, computed the way DVC 3 computes its `md5`.

    A file hashes to the md5 of its bytes; a folder to the md5 of the sorted JSON list of
    its files' {"md5", "relpath"} plus ".dir", so the value equals what dvc.lock records
    for the same output, and lineage tags can be matched against DVC.
    """
    path = Path(path)
    if path.is_file():
        return _md5_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data_version: {path} does not exist")
    entries = [{"md5": _md5_file(f), "relpath": f.relative_to(path).as_posix()}
               for f in sorted(path.rglob("*")) if f.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
