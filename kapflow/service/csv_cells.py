"""CSV cells a spreadsheet opens as text, never as a formula (CSV/formula injection).

Every CSV kapflow writes (the decision export, the deviation report, the access log) is
meant to be opened in a spreadsheet by an auditor or the clinical lead, and several of its
cells come from publishers: event ids, sources, client ids. A cell such as
`=HYPERLINK("https://…")` or `=cmd|' /c calc'!A0` would run as a formula there. OWASP's
rule (CSV Injection; ASVS 1.2.10): a cell that starts with `=`, `+`, `-`, `@`, TAB, CR
(also LF and NUL here, and the full-width `＝ ＋ － ＠` some spreadsheets read as the
same) gets a leading `'`, which spreadsheets read as "this is text" and do not show.

A spreadsheet may also split a line on another separator than the comma (`;` in many
locales, or TAB) or mis-read quotes, so a trigger right after a separator or a quote inside
a cell would start a cell of its own: it gets a `'` too. The JSON lines exports carry every
value exactly as recorded; a CSV is for reading in a spreadsheet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_TRIGGERS = "=+\\-@\t\r\n\x00＝＋－＠"
_LEADING = re.compile(f"[{_TRIGGERS}]")
# A separator or quote, optional spaces, then a trigger: the start of a cell in a
# spreadsheet that splits the line differently. The `'` goes before the trigger.
_INNER = re.compile(f"([,;\\t\\r\\n\"'|] *)(?=[{_TRIGGERS}])")


def csv_cell(value: Any) -> Any:
    """`value` as a CSV cell that cannot run as a formula: None is empty, numbers stay
    numbers (kapflow writes no negative ones), text is escaped as above."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if _INNER.search(value):
        value = _INNER.sub(r"\1'", value)
    if _LEADING.match(value):
        return "'" + value
    return value


def csv_cells(values: Iterable[Any]) -> list[Any]:
    """A row of `csv_cell`s, for `csv.writer.writerow`."""
    return [csv_cell(value) for value in values]
