"""Render the reference pages of the docs site from the code that defines them.

    python tools/render_docs.py          # rewrite docs/reference/{cli,params}.md
    python tools/render_docs.py --check  # exit 1 when a committed page differs

The CLI page comes from the Typer app (every verb, its arguments and options, their help
and defaults), the params page from params.yaml (every key, its default and the comment
beside it) and the pydantic schema in components/config.py (its type and bounds). A test
keeps the committed pages equal to what this renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"cli": ROOT / "docs" / "reference" / "cli.md",
         "params": ROOT / "docs" / "reference" / "params.md"}


# ---------------------------------------------------------------------------- CLI


def render_cli() -> str:
    import typer

    from pipelines.cli import app
    from pipelines.cli.app import EXIT_MEANINGS

    root = typer.main.get_command(app)
    lines = ["# Command line", "",
             "Generated from the `tuneline` Typer app by `tools/render_docs.py`; "
             "`tuneline COMMAND --help` prints the same.", ""]
    lines += ["## Exit codes", "", "| code | meaning |", "|---|---|"]
    lines += [f"| {code.value} | {text} |" for code, text in EXIT_MEANINGS.items()]
    lines.append("")
    for path, command in _commands(root, ()):
        if command.hidden:
            continue
        lines += [f"## `tuneline {' '.join(path)}`", "", _clean(command.help or "", "\n\n"),
                  ""]
        rows = [_param_row(p) for p in command.params
                if not getattr(p, "hidden", False) and p.name != "help"]
        if rows:
            lines += ["| argument / option | help | default |", "|---|---|---|", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def _commands(group: Any, prefix: tuple[str, ...]):
    """(words, command) of every leaf command (Typer vendors click: duck-typed)."""
    for name in sorted(group.commands):
        command = group.commands[name]
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _param_row(param: Any) -> str:
    if param.param_type_name == "argument":
        names = f"`{(param.metavar or param.name).upper()}`"
    else:
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    default = param.default
    shown = "" if callable(default) or default in (None, False, (), []) else f"`{default}`"
    return f"| {names} | {_clean(getattr(param, 'help', '') or '')} | {shown} |"


def _clean(text: str, sep: str = " ") -> str:
    """Paragraphs joined by `sep` (their lines by spaces), table-safe."""
    paragraphs = [" ".join(line.strip() for line in block.splitlines())
                  for block in re.split(r"\n\s*\n", text.replace("\b", "").strip())]
    return sep.join(p for p in paragraphs if p).replace("|", "\\|")


# ---------------------------------------------------------------------------- params


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(?:#\s?(?P<note>.*))?$")
_NOTE = re.compile(r"^ *#\s?(?P<note>.*)$")


def params_entries(text: str) -> list[dict[str, str]]:
    """(dotted key, default as written, the comment beside it or the comments just above it)
    for every key of params.yaml; comment lines under a key's comment continue it."""
    entries: list[dict[str, str]] = []
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last: dict[str, str] | None = None
    for raw in text.splitlines():
        note = _NOTE.match(raw)
        if note:
            if last is not None and last["inline"] and raw.index("#") > 0:
                last["note"] += " " + note["note"].strip()  # a comment continued
            else:
                above.append(note["note"].strip())
                last = None
            continue
        if not raw.strip():
            above, last = [], None
            continue
        match = _KEY.match(raw)
        if not match:
            last = None
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        key = ".".join([k for _, k in stack] + [match["key"]])
        inline = (match["note"] or "").strip()
        value = match["value"].strip()
        last = {"key": key, "value": value, "note": inline or " ".join(above),
                "inline": "1" if inline else ""}
        entries.append(last)
        above = []
        if not value:
            stack.append((depth, match["key"]))
    return entries


def render_params() -> str:
    from components.config import Params

    schema = Params.model_json_schema()
    entries = params_entries((ROOT / "params.yaml").read_text())
    lines = ["# params.yaml", "",
             "Every key of `params.yaml`, generated by `tools/render_docs.py` from the file "
             "and the schema in `components/config.py`. Unknown keys are errors; "
             "`tuneline params --set KEY=VALUE` prints the result of an override.", ""]
    section = None
    for entry in entries:
        top = entry["key"].split(".")[0]
        if top != section:
            section = top
            lines += ["", f"## `{top}`", "", "| key | default | type | what it is |",
                      "|---|---|---|---|"]
        if not entry["value"] and entry["key"] == top:
            if entry["note"]:
                lines.insert(len(lines) - 2, _clean(entry["note"]) + "\n")
            continue
        kind = _type_of(schema, entry["key"].split("."))
        value = f"`{entry['value']}`" if entry["value"] else ""
        lines.append(f"| `{entry['key']}` | {value} | {kind} | {_clean(entry['note'])} |")
    return "\n".join(lines).rstrip() + "\n"


def _type_of(schema: dict[str, Any], parts: list[str]) -> str:
    """A short type (with bounds) of the schema node at `parts`."""
    node: dict[str, Any] = schema
    for part in parts:
        node = _deref(schema, node)
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return ""
    return _describe(schema, _deref(schema, node))


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return schema["$defs"][node["$ref"].split("/")[-1]]
    if "allOf" in node and len(node["allOf"]) == 1:
        return _deref(schema, node["allOf"][0])
    return node


def _describe(schema: dict[str, Any], node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "anyOf" in node:
        return " or ".join(filter(None, (_describe(schema, _deref(schema, n))
                                         for n in node["anyOf"])))
    kind = node.get("type", "section" if "properties" in node else "")
    if kind == "array" and "items" in node:
        kind = f"list of {_describe(schema, _deref(schema, node['items'])) or 'values'}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        kind = f"map to {_describe(schema, _deref(schema, node['additionalProperties']))}"
    bounds = [f"{sym} {node[k]}" for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                  ("maximum", "<="), ("exclusiveMaximum", "<"))
              if k in node]
    return " ".join([kind, *bounds]).strip()


# ---------------------------------------------------------------------------- main


def rendered() -> dict[str, str]:
    return {"cli": render_cli(), "params": render_params()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a committed page differs from the rendering")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        page = PAGES[name]
        if args.check:
            if not page.exists() or page.read_text() != text:
                stale.append(str(page.relative_to(ROOT)))
        else:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text)
    if stale:
        print("stale (run python tools/render_docs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
