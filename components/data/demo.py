"""The demo corpus: real docstrings of the installed Python standard library.

Each docstring is labeled by the family of module it comes from (networking, concurrency,
email, ...). For token classification the same rows also carry the docstring's words and
BIO tags: the spans its author marked up become entities, with the markup removed
(`markup_entities`): ``code``, `code` and a quoted 'value' -> CODE; :func:`x`,
:class:`x`, :meth:`x`, :mod:`x` and the other Sphinx roles -> REF; PEP nnn and
:pep:`nnn` -> PEP; URLs -> URL.
Sources are parsed with `ast`, never imported, so building the corpus has no
side effects and is deterministic for a given Python version. Every docstring, sampled or
not, also goes to an unlabeled text file for masked-LM pretraining.

Corpus folder layout:
    labeled.jsonl   {"text", "label", "source", "tokens", "tags"} per line (input of
                    `prepare`: text + label, or tokens + tags for token classification)
    unlabeled.txt   one docstring per line (input of `pretrain`)
    corpus.json     Python version, families, counts
"""

from __future__ import annotations

import ast
import inspect
import json
import random
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

from components.config import DemoConfig
from components.data.checks import normalize_text
from components.io import atomic_dir

# family -> stdlib modules (a name ending in "/" is a package: all its .py files).
FAMILIES: dict[str, list[str]] = {
    "concurrency": ["asyncio/", "concurrent/", "multiprocessing/", "threading", "queue",
                    "sched", "subprocess", "selectors"],
    "networking": ["http/", "urllib/", "xmlrpc/", "wsgiref/", "socket", "ssl", "socketserver",
                   "smtplib", "ftplib", "poplib", "imaplib", "ipaddress", "nntplib"],
    "email": ["email/", "mailbox", "mimetypes", "smtpd"],
    "markup": ["xml/", "html/"],
    "files": ["os", "shutil", "pathlib", "glob", "fnmatch", "tempfile", "filecmp", "zipfile",
              "tarfile", "gzip", "bz2", "lzma", "_pyio", "stat", "posixpath", "genericpath",
              "fileinput", "zipimport"],
    "data_formats": ["json/", "tomllib/", "dbm/", "csv", "configparser", "plistlib", "pickle",
                     "pickletools", "base64", "quopri", "shelve", "netrc", "uu", "binhex"],
    "numbers_time": ["_pydecimal", "fractions", "statistics", "random", "numbers", "datetime",
                     "calendar", "zoneinfo/", "_strptime"],
    "devtools": ["unittest/", "logging/", "doctest", "pdb", "bdb", "inspect", "dis", "ast",
                 "tokenize", "traceback", "trace", "cProfile", "profile", "pstats", "timeit",
                 "pydoc", "linecache", "warnings"],
    "text": ["re/", "string", "textwrap", "difflib", "gettext", "locale", "codecs", "shlex",
             "stringprep", "argparse", "optparse"],
    "containers": ["collections/", "functools", "operator", "heapq", "bisect", "enum",
                   "dataclasses", "typing", "copy", "weakref", "abc", "_collections_abc",
                   "contextlib", "types", "graphlib"],
}


# Bump when the rows change shape: an older corpus is then rebuilt.
CORPUS_FORMAT = 2
# Markup a docstring's author used to mark a span, leftmost first: a Sphinx role, a
# ``literal``, a `literal`, a 'quoted' value (one word), a PEP number, a URL.
_MARKUP = re.compile(
    r":(?:py:)?(?P<role>[a-z]+):`(?P<target>[^`]+)`"
    r"|``(?P<literal>[^`]+)``"
    r"|(?<![`\w])`(?P<code>[^`]+)`(?![`\w])"
    r"|(?<![\w'])'(?P<quoted>[^'\s]{1,40})'(?![\w'])"
    r"|\b(?P<pep>PEP\s?\d+)\b"
    r"|(?P<url>https?://[^\s<>`\"']+[^\s<>`\"'.,;:)\]])")


def markup_entities(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """`text` without its markup, and the (start, end, type) of each span it marked."""
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = length = 0
    for m in _MARKUP.finditer(text):
        kind, content = _entity(m)
        if not content:
            continue
        out.append(text[pos: m.start()])
        length += m.start() - pos
        spans.append((length, length + len(content), kind))
        out.append(content)
        length += len(content)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), spans


def _entity(m: re.Match) -> tuple[str, str]:
    if m["role"]:
        target = m["target"].strip().lstrip("~!")
        if "<" in target and target.endswith(">"):  # :ref:`title <target>`: the title shows
            target = target.split("<", 1)[0].strip()
        if m["role"] == "pep":
            return "PEP", f"PEP {target}"
        return "REF", target
    if m["literal"] or m["code"] or m["quoted"]:
        return "CODE", (m["literal"] or m["code"] or m["quoted"]).strip()
    if m["pep"]:
        return "PEP", m["pep"]
    return "URL", m["url"]


def bio_words(text: str, spans: list[tuple[int, int, str]]) -> tuple[list[str], list[str]]:
    """The words of `text` (as a BERT pre-tokenizer splits them) and their BIO tags.

    A word belongs to the span its first character is in; the first word of a span is B-.
    """
    from tokenizers.pre_tokenizers import BertPreTokenizer

    words = BertPreTokenizer().pre_tokenize_str(text)
    tags, previous = [], None
    for _, (start, _) in words:
        span = next((s for s in spans if s[0] <= start < s[1]), None)
        if span is None:
            tags.append("O")
        else:
            tags.append(("I-" if span == previous else "B-") + span[2])
        previous = span
    return [w for w, _ in words], tags


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(name: str, root: Path) -> list[Path]:
    """Source files of one stdlib module or package (tests excluded); [] when absent."""
    if name.endswith("/"):
        pkg = root / name.rstrip("/")
        return sorted(p for p in pkg.rglob("*.py") if "test" not in p.relative_to(pkg).parts)
    path = root / f"{name}.py"
    return [path] if path.exists() else []


def docstrings(path: Path) -> list[str]:
    """Every module, class and function docstring of a source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            out.append(inspect.cleandoc(doc))
    return out


def clean_docstring(doc: str, cfg: DemoConfig) -> str | None:
    """One line of text, cut at a word boundary past `max_docstring_chars`; None if short."""
    # Doctest examples are code, not prose: drop them.
    lines = [ln for ln in doc.splitlines() if not ln.lstrip().startswith((">>>", "..."))]
    text = normalize_text(" ".join(lines))
    if len(text) < cfg.min_docstring_chars:
        return None
    if len(text) > cfg.max_docstring_chars:
        text = text[: cfg.max_docstring_chars].rsplit(" ", 1)[0]
    return text


def collect_corpus(cfg: DemoConfig, root: Path | None = None
                   ) -> tuple[list[dict[str, str]], list[str]]:
    """Labeled rows (sampled per family, deduplicated) and every docstring as unlabeled text.

    A text found in two families is ambiguous and left out of the labeled rows.
    """
    root = root or stdlib_dir()
    by_family: dict[str, list[dict[str, str]]] = {}
    families_of: dict[str, set[str]] = {}
    unlabeled: list[str] = []
    for family, modules in FAMILIES.items():
        rows, seen = [], set()
        for module in modules:
            for path in module_files(module, root):
                for doc in docstrings(path):
                    text = clean_docstring(doc, cfg)
                    if text is None or text in seen:
                        continue
                    seen.add(text)
                    unlabeled.append(text)
                    families_of.setdefault(text, set()).add(family)
                    tokens, tags = bio_words(*markup_entities(text))
                    rows.append({"text": text, "label": family,
                                 "source": path.relative_to(root).as_posix(),
                                 "tokens": tokens, "tags": tags})
        by_family[family] = rows
    labeled = []
    rng = random.Random(cfg.seed)
    for rows in by_family.values():
        rows = [r for r in rows if len(families_of[r["text"]]) == 1]
        if len(rows) > cfg.max_rows_per_family:
            rows = rng.sample(rows, cfg.max_rows_per_family)
        labeled.extend(rows)
    rng.shuffle(labeled)
    return labeled, list(dict.fromkeys(unlabeled))


def build_demo_corpus(out_dir: str | Path, cfg: DemoConfig) -> dict[str, Any]:
    """Write labeled.jsonl, unlabeled.txt and corpus.json into `out_dir` (atomically)."""
    labeled, unlabeled = collect_corpus(cfg)
    counts: dict[str, int] = {}
    for row in labeled:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    entities: dict[str, int] = {}
    for row in labeled:
        for tag in row["tags"]:
            if tag.startswith("B-"):
                entities[tag[2:]] = entities.get(tag[2:], 0) + 1
    meta = {"format": CORPUS_FORMAT, "python": ".".join(map(str, sys.version_info[:3])),
            "labeled_rows": len(labeled),
            "unlabeled_docs": len(unlabeled), "families": dict(sorted(counts.items())),
            "entities": dict(sorted(entities.items())),
            "config": cfg.model_dump()}
    with atomic_dir(out_dir) as tmp:
        with open(tmp / "labeled.jsonl", "w", encoding="utf-8") as fh:
            for row in labeled:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
