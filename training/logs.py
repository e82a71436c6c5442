"""Run logs: CSV files (one row per log or validation step) and TensorBoard scalars.

On resume, rows past the resumed step (written after the last saved state by a run that was
then interrupted) are dropped, so the log reads as if the run had never stopped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tessera.training.atomic import atomic_write_text
from tessera.training.errors import TrainingError


class CsvLog:
    """Appends rows to ``path``; ``keep_until_step`` trims rows a resumed run will redo."""

    def __init__(self, path: str | Path, fields: list[str], keep_until_step: int | None = None):
        self.path = Path(path)
        self.fields = fields
        if keep_until_step is not None and self.path.is_file():
            self._trim(keep_until_step)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            atomic_write_text(self.path, ",".join(fields) + "\n")
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields, extrasaction="raise", lineterminator="\n")

    def _trim(self, step: int) -> None:
        text = self.path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # a row cut off by an interruption
            lines = lines[:-1]
        rows = list(csv.DictReader(io.StringIO("".join(lines))))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step)
        atomic_write_text(self.path, out.getvalue())

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class TensorBoardLog:
    """Scalars under ``log_dir``; a resumed run purges events past its step."""

    def __init__(self, log_dir: str | Path, resume_step: int | None = None):
        try:  # slow import, only when asked for
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrainingError(
                "TensorBoard logs need the 'train' extra (pip install -e '.[train]'); "
                "or pass --no-tensorboard") from exc

        purge = resume_step + 1 if resume_step is not None else None
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, step: int, values: dict[str, float], prefix: str) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
