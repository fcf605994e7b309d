"""Read a labeled text file in chunks of rows: CSV / JSONL / Parquet, only the columns used.

Memory stays bounded by the chunk size whatever the file size. A chunk is either a list of
rows, each a dict {"text", "label", "line"} (+ "group") or, for a row that cannot be
parsed, {"malformed", "raw", "line"}, quarantined later; or, for well-formed rows of
string columns (CSV, Parquet), a `ColumnChunk` holding the Arrow columns themselves, so
they can be checked column by column. Line numbers are those a user sees
in an editor: a CSV data row's line counts the header (first row = line 2), a JSONL line
its physical line; a Parquet row its position from 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from components.config import DataConfig
from components.data.files import (
    TEXT_COLUMNS,
    DataValidationError,
    input_format,
    read_jsonl_fields,
    require_columns,
)

Row = dict[str, Any]


@dataclass
class ColumnChunk:
    """Consecutive well-formed rows as Arrow string columns ("text", "label"(, "group");
    nulls allowed), the first on line `first_line` and each next one on the next line."""

    columns: dict[str, Any]
    first_line: int

    def __len__(self) -> int:
        return len(self.columns["text"])

    def rows(self) -> list[Row]:
        """The same rows as dicts, as the row-by-row reader yields them."""
        keys = (*self.columns, "line")
        values = [column.to_pylist() for column in self.columns.values()]
        lines = range(self.first_line, self.first_line + len(self))
        return [dict(zip(keys, row, strict=True)) for row in zip(*values, lines, strict=True)]


Chunk = list[Row] | ColumnChunk


class HashingReader(io.RawIOBase):
    """A binary file read once: every byte read also updates an md5 (the DVC hash)."""

    def __init__(self, fh: BinaryIO):
        self._fh, self.md5 = fh, hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        self.md5.update(memoryview(buffer)[:n])
        return n

    def hexdigest(self) -> str:
        """The md5 of the whole file: reads what the parser left unread first."""
        while block := self._fh.read(1 << 20):
            self.md5.update(block)
        return self.md5.hexdigest()


def columns_used(cfg: DataConfig) -> dict[str, str]:
    """{"text": column, "label": column (, "group": column)} as params name them."""
    fields = {"text": cfg.text_column, "label": cfg.label_column}
    if cfg.group_column:
        fields["group"] = cfg.group_column
    return fields


def iter_chunks(path: str | Path, cfg: DataConfig, source: BinaryIO | None = None
                ) -> Iterator[Chunk]:
    """Yield chunks of at most `cfg.chunk_rows` rows, in file order.

    `source` (CSV / JSONL only) is the open file to read instead of opening `path`, so a
    caller can hash the bytes in the same read.

    Raises:
        DataValidationError: unknown extension, missing file or column, or a typed text
            column (Parquet) that does not hold strings.
    """
    path = Path(path)
    fmt = input_format(path)
    if fmt == "conll":
        raise DataValidationError(f"{path}: a CoNLL file holds word tags; set "
                                  "task.type=token_classification to train on it")
    fields = columns_used(cfg)
    if fmt == "parquet":
        yield from _parquet_chunks(path, fields, cfg.chunk_rows)
        return
    if source is not None and not hasattr(source, "peek"):
        source = io.BufferedReader(source)  # type: ignore[arg-type]
    with (open(path, "rb") if source is None else contextlib.nullcontext(source)) as fh:
        if fmt == "csv":
            yield from _csv_chunks(path, fh, fields, cfg.chunk_rows)
        else:
            text = io.TextIOWrapper(fh, encoding="utf-8")
            rows = read_jsonl_fields(path, fields, TEXT_COLUMNS, stream=text)
            yield from _batched(rows, cfg.chunk_rows)
            text.detach()


def _batched(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv_chunks(path: Path, fh: BinaryIO, fields: dict[str, str], size: int
                ) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    invalid: list[Any] = []

    def skip(row: Any) -> str:  # a row with too many or too few fields
        invalid.append(row)
        return "skip"

    header = _csv_header(path, fh)
    require_columns(path, header, list(fields.values()))
    reader = pacsv.open_csv(
        fh, read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip),
        # Every value a string, an empty cell "" (not null), "NA" a word: as the user wrote it.
        convert_options=pacsv.ConvertOptions(
            include_columns=list(fields.values()),
            column_types={c: pa.string() for c in fields.values()},
            strings_can_be_null=False, quoted_strings_can_be_null=False))
    keys = (*fields, "line")
    line = 2  # the first data row
    pending: list[Row] = []
    for batch in reader:
        bad = sorted((r.number, r.text) for r in invalid)
        invalid.clear()
        if not bad:  # every row well formed: the columns go as they are
            if pending:
                yield pending
                pending = []
            yield from _column_chunks(batch, fields, line, size)
            line += batch.num_rows
            continue
        values = [batch.column(c).to_pylist() for c in fields.values()]
        for row in zip(*values, strict=True):
            # A skipped row sits where its line number says (exact when no quoted field
            # spans lines, which would shift every later line number anyway).
            while bad and bad[0][0] is not None and bad[0][0] <= line:
                pending.append(_malformed(bad.pop(0), line))
                line += 1
            pending.append(dict(zip(keys, (*row, line), strict=True)))
            line += 1
        for item in bad:
            pending.append(_malformed(item, line))
            line += 1
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def _column_chunks(batch: Any, fields: dict[str, str], line: int, size: int
                   ) -> Iterator[ColumnChunk]:
    for lo in range(0, batch.num_rows, size):
        part = batch.slice(lo, size)
        yield ColumnChunk({key: part.column(c) for key, c in fields.items()}, line + lo)


def _csv_header(path: Path, fh: BinaryIO) -> list[str]:
    """Column names from the first line, leaving the stream at the start."""
    import csv

    first = fh.peek(1 << 16)
    line = first.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    return next(csv.reader([line]), [])


def _malformed(item: tuple[int | None, str], line: int) -> Row:
    number, text = item
    return {"malformed": "wrong number of fields", "raw": text,
            "line": number if number is not None else line}


def _parquet_chunks(path: Path, fields: dict[str, str], size: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    require_columns(path, schema.names, list(fields.values()))
    text_type = schema.field(fields["text"]).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
            or pa.types.is_string_view(text_type) or pa.types.is_null(text_type)):
        raise DataValidationError(f"{path}: column {fields['text']!r} holds {text_type}, not "
                                  "text; set data.text_column to the column with the texts")
    keys = (*fields, "line")
    line = 1
    as_columns = all(pa.types.is_string(schema.field(c).type)
                     or pa.types.is_large_string(schema.field(c).type) for c in fields.values())
    for batch in pf.iter_batches(batch_size=size, columns=list(fields.values())):
        if as_columns:  # strings (or nulls) only: checked column by column
            yield from _column_chunks(batch, fields, line, size)
            line += batch.num_rows
            continue
        values = [batch.column(c).to_pylist() for c in fields.values()]
        lines = range(line, line + batch.num_rows)
        yield [dict(zip(keys, row, strict=True)) for row in zip(*values, lines, strict=True)]
        line += batch.num_rows
