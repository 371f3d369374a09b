"""Bad-input errors and the bad-row tally of ``on_bad_row="skip"``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

ON_BAD_ROW = ("error", "skip")

#: Reasons a row is rejected (keys of :attr:`BadRows.counts`).
REASONS = (
    "wrong_column_count",  # not the declared number of columns
    "bad_label",  # label missing or not 0/1
    "dense_not_integer",  # Criteo I1..I13: not a base-10 integer
    "dense_out_of_range",  # Criteo I1..I13: integer outside int64
    "dense_not_numeric",  # generic dense column: not a finite number
)


class DataFormatError(ValueError):
    """Bad input, located: ``str(err)`` names the file, the 1-based line (or row) and the column.

    Attributes:
        path: the input file.
        line: 1-based line number (CSV/TSV) or row number (Parquet), if known.
        column: column name, if the problem is one value.
        value: the offending text, if any.
        reason: one of :data:`REASONS`, or ``"parse"`` for anything else.
    """

    def __init__(self, message: str, *, path: str = "", line: Optional[int] = None,
                 column: Optional[str] = None, value: Optional[str] = None, reason: str = "parse"):
        super().__init__(message)
        self.path = path
        self.line = line
        self.column = column
        self.value = value
        self.reason = reason


def check_on_bad_row(on_bad_row: str) -> str:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    return on_bad_row


@dataclass
class BadRows:
    """Rows skipped under ``on_bad_row="skip"``: counts by reason and the first few messages."""

    counts: Dict[str, int] = field(default_factory=dict)
    examples: List[str] = field(default_factory=list)
    max_examples: int = 10

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def add(self, reason: str, n: int, messages: List[str]) -> None:
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + int(n)
        room = self.max_examples - len(self.examples)
        if room > 0:
            self.examples.extend(messages[:room])


class RowProblems:
    """Vectorized findings of one chunk: for each bad row its line, reason, column and value.

    Args:
        path: the input file, for messages.
        lines: ``int64[k]`` 1-based line (or row) numbers of the bad rows.
        reasons: ``int64[k]`` indices into :data:`REASONS`.
        columns: ``object[k]`` column names (``None`` for row-level problems).
        values: ``object[k]`` offending texts (``None`` for row-level problems).
        found: ``int64[k]`` number of columns found (row-level problems only).
        expected: the expected number of columns.
        unit: ``"line"`` (text files) or ``"row"`` (Parquet).

    Messages are built only for the rows that are reported (the first error, a few examples),
    never per bad row.
    """

    def __init__(self, path: str, lines: np.ndarray, reasons: np.ndarray, columns: np.ndarray,
                 values: np.ndarray, found: Optional[np.ndarray] = None, expected: int = 0,
                 unit: str = "line"):
        order = np.argsort(lines, kind="stable")
        self.path = path
        self.lines = np.asarray(lines, dtype=np.int64)[order]
        self.reasons = np.asarray(reasons, dtype=np.int64)[order]
        self.columns = np.asarray(columns, dtype=object)[order]
        self.values = np.asarray(values, dtype=object)[order]
        self.found = (np.zeros(len(order), np.int64) if found is None
                      else np.asarray(found, dtype=np.int64)[order])
        self.expected = expected
        self.unit = unit

    def __len__(self) -> int:
        return len(self.lines)

    @staticmethod
    def concat(parts: "List[RowProblems]") -> "RowProblems":
        p0 = parts[0]
        return RowProblems(
            p0.path,
            np.concatenate([p.lines for p in parts]),
            np.concatenate([p.reasons for p in parts]),
            np.concatenate([p.columns for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.found for p in parts]),
            p0.expected, p0.unit,
        )

    def error(self, i: int) -> DataFormatError:
        reason = REASONS[int(self.reasons[i])]
        where = f"{self.path} {self.unit} {int(self.lines[i])}"
        col, val = self.columns[i], self.values[i]
        if reason == "wrong_column_count":
            msg = f"{where}: expected {self.expected} columns, got {int(self.found[i])}"
        else:
            what = {
                "bad_label": "is not 0 or 1",
                "dense_not_integer": "is not an integer",
                "dense_out_of_range": "is outside the int64 range",
                "dense_not_numeric": "is not a finite number",
            }[reason]
            shown = "'' (empty)" if val is None else repr(str(val))
            msg = f"{where}, column {col}: {shown} {what}"
        return DataFormatError(msg, path=self.path, line=int(self.lines[i]), column=col,
                               value=None if val is None else str(val), reason=reason)

    def raise_first(self) -> None:
        if len(self.lines):
            raise self.error(0)

    def tally(self, bad: BadRows) -> None:
        counts = np.bincount(self.reasons, minlength=len(REASONS))
        for r in np.flatnonzero(counts):
            idx = np.flatnonzero(self.reasons == r)[: bad.max_examples]
            bad.add(REASONS[r], int(counts[r]), [str(self.error(int(i))) for i in idx])
