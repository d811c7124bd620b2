"""The training metrics log: one record per logged step, as JSON lines or CSV (by file suffix)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from sctranslator.util.atomic import write_errors

CSV_FIELDS = ("step", "epoch", "lr", "train_loss", "val_loss", "val_pearson", "seconds")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends records to a file: CSV with fixed columns for a .csv, JSON lines otherwise.

    Parameters
    ----------
    path : str, pathlib.Path or None
        The file; None: records are dropped.
    append : bool
        Keep what the file holds (a resumed run); otherwise it is started afresh.
    """

    def __init__(self, path: str | Path | None, *, append: bool = False):
        self.path = Path(path) if path else None
        if self.path is None:
            return
        with write_errors(self.path):  # a full or read-only disk: a named error, not a traceback
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append or not self.path.exists():
                self.path.write_text(",".join(CSV_FIELDS) + "\n" if self.is_csv else "")

    @property
    def is_csv(self) -> bool:
        """Whether records are written as CSV."""
        return self.path is not None and self.path.suffix.lower() == ".csv"

    def write(self, record: dict[str, Any]) -> None:
        """Append one record.

        Parameters
        ----------
        record : dict
            Column -> value.

        Raises
        ------
        OutputWriteError
            The file cannot be written.
        """
        if self.path is None:
            return
        with write_errors(self.path), self.path.open("a", newline="") as fh:
            if self.is_csv:
                csv.writer(fh).writerow(["" if _clean(record.get(k)) is None else record[k] for k in CSV_FIELDS])
            else:
                fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
