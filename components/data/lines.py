"""JSON lines of prepared rows, byte for byte those of `json.dumps(..., ensure_ascii=False)`.

A prepared split file holds one {"text", "label"(, "group")} object a line. Most chunks
are built by Arrow string kernels on whole columns; a chunk whose strings need more than
the quote and the backslash escaped (a character below U+0020) is left to json's encoder.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote
from typing import Any

import numpy as np


def json_line(obj: Any) -> bytes:
    """`obj` as one UTF-8 JSON line."""
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def kept_line(text: str, label: str, group: str | None) -> bytes:
    """`json_line({"text", "label"(, "group")})` of strings, a few times faster."""
    out = f'{{"text": {_quote(text)}, "label": {_quote(label)}'
    if group is not None:
        out += f', "group": {_quote(group)}'
    return (out + "}\n").encode()


def kept_lines(texts: Any, labels: list[str], groups: list[str] | None
               ) -> tuple[Any, np.ndarray]:
    """(the `kept_line`s of a chunk as one bytes-like buffer, each line's size in bytes).

    `texts` is a list of strings or an Arrow string array (then the lines are made by
    Arrow: json.dumps escapes only the quote, the backslash and characters below U+0020).
    """
    arrow = not isinstance(texts, list)
    if arrow:
        import pyarrow as pa

        columns = [("text", texts), ("label", pa.array(labels, type=pa.string()))]
        if groups is not None:
            columns.append(("group", pa.array(groups, type=pa.string())))
        if not any(_has_control_character(column) for _, column in columns):
            return _arrow_lines(columns)
        texts = texts.to_pylist()
    lines = [kept_line(t, lab, g) for t, lab, g in zip(
        texts, labels, groups or [None] * len(labels), strict=True)]
    return b"".join(lines), np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))


def _arrow_lines(columns: list[tuple[str, Any]]) -> tuple[Any, np.ndarray]:
    import pyarrow.compute as pc

    parts: list[Any] = []
    for name, column in columns:
        quoted = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
        parts += [f'{", " if parts else "{"}"{name}": "', quoted, '"']
    joined = pc.binary_join_element_wise(*parts, "}\n", "")
    _, offsets_buffer, data = joined.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        joined.offset: joined.offset + len(joined) + 1]
    return memoryview(data)[offsets[0]: offsets[-1]], np.diff(offsets).astype(np.int64)


def _has_control_character(strings: Any) -> bool:
    """Does an Arrow string array hold a character below U+0020? (In UTF-8 no byte of a
    longer character is below 0x80, so one numpy pass over the bytes tells.)"""
    _, offsets, data = strings.buffers()
    if data is None:
        return False
    bounds = np.frombuffer(offsets, dtype=np.int32)[[strings.offset, strings.offset + len(strings)]]
    return bool((np.frombuffer(data, dtype=np.uint8)[bounds[0]: bounds[1]] < 0x20).any())
