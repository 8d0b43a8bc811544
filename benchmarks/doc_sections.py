"""docs/benchmarks.md is shared by every benchmark script: each one rewrites only its own section."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the '## <title>' section that `text` starts with (or append it); other sections stay."""
    title = text.splitlines()[0]
    if not title.startswith("## "):
        raise ValueError(f"a section starts with '## ', got {title!r}")
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(title + "\n")
    if start >= 0:
        end = doc.find("\n## ", start + 1)
        doc = doc[:start] + text.rstrip("\n") + "\n" + (doc[end:] if end >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc.rstrip("\n") + "\n")


def section_of(doc: str, title: str) -> str:
    """The '## <title>' section of `doc` as `replace_section` wrote it (without its trailing newlines)."""
    start = doc.index(title + "\n")
    end = doc.find("\n## ", start + 1)
    return doc[start: end if end >= 0 else len(doc)].rstrip("\n")


def publish(results: Path, document: dict[str, Any], text: str) -> None:
    """--write-docs: the result file (JSON) and its rendered docs/benchmarks.md section."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(document, indent=1) + "\n")
    replace_section(text)
