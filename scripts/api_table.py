"""Write the public-API reference of docs/api.md: one table per package, one row per name in its
`__all__` (signature without annotations, and the docstring's first sentence).

    python scripts/api_table.py           # rewrite the generated part of docs/api.md
    python scripts/api_table.py --check   # exit 1 if docs/api.md is out of date

`tests/test_api.py` checks the names and signatures (not the descriptions), so a new or changed
public name lands with its row."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

PACKAGES = ("icl_lab", "icl_lab.measure", "icl_lab.intervene", "icl_lab.pipeline", "icl_lab.report", "icl_lab.run",
            "icl_lab.organisms.oocr", "icl_lab.organisms.grokking", "icl_lab.organisms.markov")
DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
START, END = "<!-- api-table:start (scripts/api_table.py writes this part) -->", "<!-- api-table:end -->"


def first_sentence(obj: object) -> str:
    """The docstring's first sentence, on one line, without a trailing colon."""
    doc = inspect.getdoc(obj) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", paragraph)[0]
    return sentence.rstrip(":").replace("|", "\\|")


def signature(name: str, obj: object) -> str:
    """`name(arg, key=default, ...)` without annotations; `NAME` for a constant."""
    if inspect.ismodule(obj):
        return f"`{name}`"
    if not callable(obj):
        return f"`{name}`"
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return f"`{name}(...)`"
    parts, star = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        star = star or p.kind is p.VAR_POSITIONAL
        default = "" if p.default is p.empty else f"={_short(p.default)}"
        parts.append(f"{prefix}{p.name}{default}")
    return f"`{name}({', '.join(parts)})`".replace("|", "\\|")


def _short(value: object) -> str:
    text = repr(value) if not callable(value) else getattr(value, "__name__", "...")
    return text if len(text) <= 30 else "..."


def describe(obj: object) -> str:
    if inspect.ismodule(obj):
        return f"module: {first_sentence(obj)}"
    if not callable(obj) or (not inspect.isclass(obj) and not inspect.isroutine(obj) and not inspect.getdoc(obj)):
        text = repr(obj)
        if len(text) > 60 and hasattr(obj, "__len__"):
            keys = list(obj)[:4]
            text = f"{len(obj)} entries: {', '.join(str(k) for k in keys)}{', ...' if len(obj) > 4 else ''}"
        return f"constant ({type(obj).__name__}): `{text}`".replace("|", "\\|")
    return first_sentence(obj) or "(no docstring)"


def table(package: str) -> str:
    module = importlib.import_module(package)
    rows = [f"### `{package}`", "", "| name | what it is |", "|---|---|"]
    for name in sorted(module.__all__, key=str.lower):
        obj = getattr(module, name)
        rows.append(f"| {signature(name, obj)} | {describe(obj)} |")
    return "\n".join(rows)


def generated() -> str:
    return "\n\n".join([START] + [table(p) for p in PACKAGES] + [END])


def updated(text: str) -> str:
    """docs/api.md's text with the generated part replaced (or appended)."""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        return head + generated() + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n## Every public name\n\n" + generated() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args()
    text = DOC.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print("docs/api.md is out of date; run `python scripts/api_table.py`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
