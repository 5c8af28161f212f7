"""Reading a run's meta.json and training log without trusting them: a damaged file is a one-line
`CorruptFileError`, and the log's last line, which a crash can cut off mid-write, is told apart
from damage further up. The trainer, `Run` and `icl-lab verify` all read through here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from icl_lab.errors import CorruptFileError

LOG_FIELDS = ("step", "tokens", "loss", "loss_repeat", "lr", "tokens_per_s", "elapsed_s")


def read_meta(path: Path) -> dict:
    """A run's meta.json as a dict ({} when the file does not exist yet).

    Raises:
        CorruptFileError: the file is not a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptFileError(f"{path.parent.name}/meta.json is damaged ({_first_line(e)}); "
                               f"restore it, or delete it to continue without its data check") from None
    except OSError as e:
        raise CorruptFileError(f"cannot read {path} ({e.strerror}); check the file's permissions") from None
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{path.parent.name}/meta.json is damaged (not a JSON object); "
                               f"restore it, or delete it to continue without its data check")
    return meta


@dataclass(frozen=True)
class LogRead:
    """The parsed training log.

    Attributes:
        rows: one dict per complete row, in file order.
        torn: the last line, cut off by a crash mid-write (no newline, or not JSON), else "".
    """

    rows: list[dict]
    torn: str = ""


def read_log(path: Path) -> LogRead:
    """The rows of a train_log.jsonl, with a torn last line set apart.

    Raises:
        CorruptFileError: a line before the last is not a JSON row with an integer step, or the
            steps do not increase; the message names the line.
    """
    if not path.is_file():
        return LogRead([])
    data = path.read_bytes()
    lines = data.split(b"\n")
    last, lines = lines[-1], lines[:-1]  # "" when the file ends with a newline
    rows: list[dict] = []
    for number, line in enumerate(lines, 1):
        row = _row(line)
        if row is None or (rows and row["step"] <= rows[-1]["step"]):
            if number == len(lines) and not last:  # the final line: a crash may have left junk there too
                return LogRead(rows, line.decode("utf-8", errors="replace") or "\\n")
            what = "not a training-log row" if row is None else f"step {row['step']} after step {rows[-1]['step']}"
            raise CorruptFileError(f"{path.parent.name}/train_log.jsonl line {number} is damaged ({what}); "
                                   f"delete that line and the ones after it, then rerun with --resume")
        rows.append(row)
    return LogRead(rows, last.decode("utf-8", errors="replace"))


def _row(line: bytes) -> dict | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(row, dict) or type(row.get("step")) is not int:
        return None
    if any(key in row and type(row[key]) not in (int, float) for key in LOG_FIELDS[1:]):
        return None  # a number damaged into a string, a list, a bool or null
    return row


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:80]
