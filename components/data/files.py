"""Read inputs and prepared data; content hashes of files and folders (DVC's md5).

Labeled input: CSV / JSONL / Parquet with text and label columns (and optionally a group
column), or for token classification JSONL / CoNLL (`components.task_types.token_data`); unlabeled
text: .txt (one document per line) or .jsonl with a text field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

SPLITS = ("train", "validation", "test")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".pq": "parquet", ".conll": "conll"}
# The params keys that name a labeled text file's columns (said when one is missing).
TEXT_COLUMNS = "data.text_column / data.label_column / data.group_column"


class DataValidationError(ValueError):
    """The input cannot be prepared: missing columns, too many bad rows, too few classes."""


# ---------------------------------------------------------------------------- reading


def input_format(path: str | Path) -> str:
    """"csv" | "jsonl" | "parquet" for a labeled input file.

    Raises:
        DataValidationError: the file is missing, is a folder, or has another extension.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"input not found: {path}")
    if not path.is_file():
        raise DataValidationError(f"{path} is a folder; give one CSV, JSONL or Parquet file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataValidationError(
            f"{path}: unsupported extension {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def read_jsonl_fields(path: Path, fields: dict[str, str], setting: str,
                      stream: TextIO | None = None) -> Iterator[dict[str, Any]]:
    """Yield {key: obj[column] for key, column in fields} + "line" per JSONL object.

    A line that is not a JSON object is yielded as {"malformed", "raw", "line"} and
    quarantined later; blank lines are skipped.

    `stream` is the open file to read instead of opening `path`.

    Raises:
        DataValidationError: the first object lacks one of the columns (`setting` names
            the params keys that choose them).
    """
    seen_columns = False
    with open(path, encoding="utf-8") if stream is None else contextlib.nullcontext(stream
                                                                                   ) as fh:
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
                require_columns(path, list(obj), list(fields.values()), setting)
                seen_columns = True
            yield {**{key: obj.get(column) for key, column in fields.items()}, "line": lineno}


def require_columns(path: Path, found: list[str], columns: list[str],
                     setting: str = TEXT_COLUMNS) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; found {found}. Set {setting} to the names "
            "your file uses.")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- prepared data


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


def load_texts(prepared_dir: str | Path, split: str) -> list[str]:
    """The texts of one prepared split, whatever the task (token rows keep their words
    joined by spaces as their text)."""
    with open(Path(prepared_dir) / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


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
        return md5_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data_version: {path} does not exist")
    entries = [{"md5": md5_file(f), "relpath": f.relative_to(path).as_posix()}
               for f in sorted(path.rglob("*")) if f.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
