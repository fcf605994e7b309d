"""Token classification without torch: BIO tags, entity metrics, windowed word tagging.

Words are what the tokenizer's pre-tokenizer makes of a text (BERT: runs of letters and
digits, each punctuation mark alone), so a word's tag is predicted on its first sub-token
and the model never sees a word boundary it was not trained with. A text longer than
`max_length` sub-tokens is cut into overlapping windows (`task.stride` sub-tokens shared);
a word is tagged from the window where its first sub-token lies farthest from an edge.

Used by evaluation (torch model), export parity and the gate (ONNX Runtime), and the
serving process, which must not import torch: the model is any function of
(input_ids, attention_mask) -> logits [batch, seq, tags].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OUTSIDE = "O"
RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


# ---------------------------------------------------------------------------- BIO tags


def tag_type(tag: str) -> str | None:
    """"B-CODE" -> "CODE"; "O" -> None."""
    return None if tag == OUTSIDE else tag[2:]


def is_bio_tag(tag: Any) -> bool:
    return isinstance(tag, str) and (tag == OUTSIDE or (tag[:2] in ("B-", "I-") and
                                                        len(tag) > 2))


def bio_error(tags: Sequence[str]) -> str | None:
    """Why `tags` is not a valid BIO sequence (I-X must follow B-X or I-X), or None."""
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if not is_bio_tag(tag):
            return f"tag {i} {tag!r} is not O, B-<type> or I-<type>"
        if tag.startswith("I-") and tag_type(previous) != tag_type(tag):
            return f"tag {i} {tag!r} follows {previous!r}"
        previous = tag
    return None


def entity_types(tags: Sequence[str]) -> list[str]:
    return sorted({t for t in map(tag_type, tags) if t})


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity; a stray I-X starts one (conlleval)."""
    out: list[tuple[str, int, int]] = []
    current: list[Any] | None = None
    for i, tag in enumerate(tags):
        kind = tag_type(tag)
        if kind is None or tag.startswith("B-") or current is None or current[0] != kind:
            if current is not None:
                out.append((current[0], current[1], i))
            current = [kind, i] if kind is not None else None
    if current is not None:
        out.append((current[0], current[1], len(tags)))
    return out


# ---------------------------------------------------------------------------- metrics


def sentence_counts(gold: Sequence[str], pred: Sequence[str], types: Sequence[str]
                    ) -> np.ndarray:
    """One sentence's sufficient statistics: [correct tokens, tokens, tp, fp, fn per type].

    Every metric of a set of sentences is a function of the sum of these rows, which makes
    the paired bootstrap over sentences one matrix product (see `metrics_from_counts`).
    """
    index = {t: i for i, t in enumerate(types)}
    row = np.zeros(2 + 3 * len(types), dtype=np.int64)
    row[0] = sum(g == p for g, p in zip(gold, pred, strict=True))
    row[1] = len(gold)
    g, p = set(bio_entities(gold)), set(bio_entities(pred))
    for entities, column in ((g & p, 0), (p - g, 1), (g - p, 2)):
        for kind, _, _ in entities:
            if kind in index:
                row[2 + 3 * index[kind] + column] += 1
    return row


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    return p, r, f


def metrics_from_counts(totals: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy (token), entity_f1 (micro), macro_f1 (mean over types present) of summed
    `sentence_counts`; `totals` is [..., columns], so a batch of resamples works too."""
    totals = np.asarray(totals, dtype=np.float64)
    acc = np.divide(totals[..., 0], totals[..., 1], out=np.zeros_like(totals[..., 0]),
                    where=totals[..., 1] > 0)
    per = totals[..., 2:].reshape(*totals.shape[:-1], -1, 3)
    tp, fp, fn = per[..., 0], per[..., 1], per[..., 2]
    _, _, f1 = _prf(tp, fp, fn)
    present = (tp + fp + fn) > 0
    macro = (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)
    _, _, micro = _prf(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    return {"accuracy": acc, "entity_f1": micro, "macro_f1": macro}


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  types: Sequence[str]) -> dict[str, Any]:
    """Entity-level (exact span + type) precision / recall / F1 per type and micro, the mean
    per-type F1, and token accuracy, over sentences of word tags."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    counts = np.array([sentence_counts(g, p, types) for g, p in zip(gold, pred, strict=True)]
                      ).reshape(-1, 2 + 3 * len(types))
    totals = counts.sum(axis=0)
    per = totals[2:].reshape(-1, 3)
    p, r, f = _prf(per[:, 0], per[:, 1], per[:, 2])
    mp, mr, mf = _prf(per[:, 0].sum(), per[:, 1].sum(), per[:, 2].sum())
    summary = metrics_from_counts(totals)
    return {"n": len(gold), "tokens": int(totals[1]),
            "accuracy": float(summary["accuracy"]), "entity_f1": float(mf),
            "entity_precision": float(mp), "entity_recall": float(mr),
            "macro_f1": float(summary["macro_f1"]),
            "per_type": {t: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(per[i, 0] + per[i, 2])}
                         for i, t in enumerate(types)}}


# ---------------------------------------------------------------------------- windows


@dataclass
class TaggedWords:
    """Word-level predictions of one text.

    Attributes:
        tags: predicted tag id per word.
        scores: probability of that tag per word.
        spans: (start, end) character offsets of each word in the text (raw-text input only).
    """

    tags: list[int]
    scores: list[float]
    spans: list[tuple[int, int]]


def window_tokenizer(tokenizer: Any, max_length: int, stride: int) -> Any:
    """A copy of a `tokenizers.Tokenizer` that cuts long input into overlapping windows."""
    from tokenizers import Tokenizer

    if stride >= max_length - 2:
        raise ValueError(f"task.stride={stride} must be smaller than model.max_length - 2 "
                         f"({max_length - 2}): windows would not advance")
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, stride=stride)
    return copy


def _windows(encoding: Any) -> list[Any]:
    return [encoding, *encoding.overflowing]


def tag_texts(tokenizer: Any, run: RunFn, inputs: Sequence[str] | Sequence[Sequence[str]],
              batch_size: int, pad_id: int = 0, pretokenized: bool = False
              ) -> list[TaggedWords]:
    """Tag the words of each input (texts, or word lists with `pretokenized`).

    `tokenizer` must come from `window_tokenizer`. Windows of all inputs are batched
    together; each batch is padded to its longest window.
    """
    encodings = tokenizer.encode_batch(list(inputs), is_pretokenized=pretokenized)
    windows = [(i, w) for i, enc in enumerate(encodings) for w in _windows(enc)]
    logits: list[np.ndarray] = []
    for start in range(0, len(windows), batch_size):
        chunk = [w for _, w in windows[start: start + batch_size]]
        width = max(len(w.ids) for w in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, w in enumerate(chunk):
            ids[row, : len(w.ids)] = w.ids
            mask[row, : len(w.ids)] = 1
        out = np.asarray(run({"input_ids": ids, "attention_mask": mask}), dtype=np.float32)
        logits.extend(out[row, : len(w.ids)] for row, w in enumerate(chunk))
    per_input: list[list[tuple[Any, np.ndarray]]] = [[] for _ in encodings]
    for (i, w), lg in zip(windows, logits, strict=True):
        per_input[i].append((w, lg))
    n_words = [len(x) for x in inputs] if pretokenized else None
    return [_merge_windows(parts, n_words[i] if n_words else None)
            for i, parts in enumerate(per_input)]


def _merge_windows(parts: list[tuple[Any, np.ndarray]], n_words: int | None) -> TaggedWords:
    """Word tags from the windows of one input (see the module docstring)."""
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for window, _ in parts:
        for word, (a, b) in zip(window.word_ids, window.offsets, strict=True):
            if word is not None:
                starts[word] = min(starts.get(word, a), a)
                ends[word] = max(ends.get(word, b), b)
    count = n_words if n_words is not None else (max(starts) + 1 if starts else 0)
    best: dict[int, tuple[int, np.ndarray]] = {}  # word -> (distance to an edge, logits)
    for window, logits in parts:
        last = len(window.ids) - 1
        for pos, (word, (a, _)) in enumerate(zip(window.word_ids, window.offsets, strict=True)):
            if word is None or a != starts[word]:
                continue  # not the word's first sub-token
            edge = min(pos, last - pos)
            if word not in best or edge > best[word][0]:
                best[word] = (edge, logits[pos])
    tags, scores, spans = [], [], []
    for word in range(count):
        if word not in best:  # no sub-token at all (e.g. a control character): outside
            tags.append(0)
            scores.append(1.0)  # never flips: both graphs say "O"
        else:
            lg = best[word][1].astype(np.float64)
            probs = np.exp(lg - lg.max())
            probs /= probs.sum()
            tags.append(int(lg.argmax()))
            scores.append(float(probs.max()))
        spans.append((starts.get(word, 0), ends.get(word, 0)))
    return TaggedWords(tags, scores, spans)


def entities_of(text: str, tagged: TaggedWords, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Entities of a raw text: {type, text, start, end, score} with character offsets.

    The score is the mean probability of the entity's word tags.
    """
    tags = [labels[t] for t in tagged.tags]
    out = []
    for kind, first, last in bio_entities(tags):
        start, end = tagged.spans[first][0], tagged.spans[last - 1][1]
        score = float(np.mean(tagged.scores[first:last]))
        out.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                    "score": score})
    return out


def is_token_bundle(config: dict[str, Any]) -> bool:
    """Whether an export_config.json describes a token-classification bundle."""
    return config.get("task", "sequence_classification") == "token_classification"


class OnnxTagger:
    """An exported token-classification bundle: texts in, entities with offsets out."""

    def __init__(self, bundle_dir: Any, model_file: Any = None, threads: int = 2,
                 verify: bool = True, session_config: dict[str, str] | None = None) -> None:
        """`model_file`: a file name (an ONNX Runtime graph, e.g. the fp32 one for parity), a
        ServedGraph, or None for the bundle's served graph."""
        import json

        from components.release.predictor import OnnxClassifier, ServedGraph
        from components.release.runtimes import load_classifier

        if model_file is None or isinstance(model_file, ServedGraph):
            self.clf = load_classifier(bundle_dir, model_file, threads=threads, verify=verify,
                                       session_config=session_config)
        else:
            self.clf = OnnxClassifier(bundle_dir, model_file, threads=threads, verify=verify,
                                      session_config=session_config)
        config = json.loads((self.clf.bundle_dir / "export_config.json").read_text())
        if not is_token_bundle(config):
            raise ValueError(f"{bundle_dir} is not a token-classification bundle")
        self.labels = self.clf.labels
        self.sha256 = self.clf.sha256
        self.pad_id = int(config.get("pad_token_id", 0))
        self.tokenizer = window_tokenizer(self.clf.tokenizer, self.clf.max_length,
                                          int(config["stride"]))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.clf.run(feeds)

    def tag(self, inputs: Sequence[Any], batch_size: int = 64,
            pretokenized: bool = False) -> list[TaggedWords]:
        """Word tags of texts (or of word lists with `pretokenized`)."""
        if not inputs:
            return []
        return tag_texts(self.tokenizer, self.run, inputs, batch_size, self.pad_id,
                         pretokenized)

    def entities(self, texts: Sequence[str], batch_size: int = 64) -> list[list[dict]]:
        """Per text: its entities {type, text, start, end, score} (character offsets)."""
        return [entities_of(text, tagged, self.labels)
                for text, tagged in zip(texts, self.tag(texts, batch_size), strict=True)]


IGNORE = -100  # the label of a sub-token that is not its word's first (no loss, no score)


def label_windows(tokenizer: Any, words: Sequence[Sequence[str]],
                  tags: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Training windows of tagged sentences: (token ids, labels) per window.

    The first sub-token of a word carries the word's tag, every other position IGNORE;
    `tokenizer` comes from `window_tokenizer`, so training sees the windows and word
    boundaries inference sees.
    """
    ids, labels = [], []
    for enc, sentence_tags in zip(tokenizer.encode_batch([list(w) for w in words],
                                                         is_pretokenized=True),
                                  tags, strict=True):
        windows = _windows(enc)
        starts: dict[int, int] = {}
        for window in windows:
            for word, (a, _) in zip(window.word_ids, window.offsets, strict=True):
                if word is not None:
                    starts[word] = min(starts.get(word, a), a)
        for window in windows:
            ids.append(list(window.ids))
            labels.append([sentence_tags[w] if w is not None and a == starts[w] else IGNORE
                           for w, (a, _) in zip(window.word_ids, window.offsets, strict=True)])
    return ids, labels
