"""One markdown-table renderer for the reports the packages write (cluster's evaluation, comparison and
sweep tables, reward's grader benchmark)."""
from __future__ import annotations

from typing import Iterable, Sequence


def table_lines(head: Sequence[str], rows: Iterable[Sequence[str]], padded_rule: bool = True) -> list[str]:
    """The lines of a markdown table: `head`, the rule under it, one line per row (cells as given).
    `padded_rule`: the rule as `| --- | --- |`, else `|---|---|` (the compact form some reports were
    first written with: their files stay byte for byte as before)."""
    rule = "| " + " | ".join(["---"] * len(head)) + " |" if padded_rule else "|" + "---|" * len(head)
    return [_line(head), rule, *(_line(row) for row in rows)]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
