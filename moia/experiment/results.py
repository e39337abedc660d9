"""The output folder of a sweep: ``trials.jsonl`` (append-only, crash-safe) and ``run.json``.

Trials are appended one batch at a time with a single ``write`` on an ``O_APPEND`` descriptor,
then ``fsync``: a run killed at any moment (``kill -9``) leaves every finished batch on disk and
at most one line cut short at the end. ``read_trials`` drops such a tail (the file is truncated
to its last complete line, and the trial is run again); a line that is not a trial record
anywhere else, or a repeated trial id, is an error naming the line, never skipped silently.

``run.json`` holds the run-wide settings (model, prompt variant, system turn, sampling, judge,
vectors, arms); resuming into a folder whose trials were made with other settings is refused, so
that one folder never mixes two experiments.
"""

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

from ..io import write_text

TRIALS = "trials.jsonl"
RUN = "run.json"


class TrialsFileError(ValueError):
    """``trials.jsonl`` holds a line that is not a trial record (or a repeated trial id)."""


def read_trials(path: str | os.PathLike, repair: bool = True) -> list[dict[str, Any]]:
    """The trial records of ``path`` in file order ([] if it does not exist).

    A last line without its newline (a write cut short by a kill) is dropped, and with
    ``repair`` the file is truncated to the end of the last complete line. Any other line that
    is not a JSON object with an ``id``, and any repeated id, raises ``TrialsFileError`` with
    its line number.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # tail: the bytes after the last newline (b"" if none)
    records: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            shown = line[:120].decode("utf-8", errors="replace")
            raise TrialsFileError(
                f"{path}:{number}: corrupt line, not a trial record: {shown!r}. Remove or fix that line "
                "(or use another output folder) and run again"
            )
        if record["id"] in first_seen:
            raise TrialsFileError(
                f"{path}:{number}: duplicate trial id {record['id']!r} (first on line "
                f"{first_seen[record['id']]})"
            )
        first_seen[record["id"]] = number
        records.append(record)
    if tail and repair:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
    return records


def append_trials(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Append records as JSON lines in one write, then fsync; returns how many were written."""
    blob = b"".join(
        (json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8") for r in records
    )
    if not blob:
        return 0
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return blob.count(b"\n")


def check_run_settings(out_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``run.json``, or check them against the recorded ones.

    ``settings["arms"]`` (optional) maps each arm to its own settings (ablation, bias file): an
    arm is checked only if the folder has settings for it, and new arms are added, so that a
    later run can add an arm to a folder. Raises ``ValueError`` listing the differences when the
    folder already holds trials made with other settings, and when it holds trials but no
    ``run.json`` (their settings are unknown); a folder without trials takes the new settings.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN
    current = json.loads(json.dumps(settings))  # normalise tuples etc. as JSON would
    has_trials = (out / TRIALS).exists() and (out / TRIALS).stat().st_size > 0
    if has_trials and not run_file.exists():
        raise ValueError(
            f"{out} holds trials ({TRIALS}) but no {RUN}: the settings they were made with cannot be "
            f"checked, so they cannot be resumed; restore {RUN}, or use another output folder"
        )
    if run_file.exists() and has_trials:
        try:
            recorded = json.loads(run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_file} is not valid JSON ({e}); fix or remove it") from e
        old_arms, new_arms = recorded.pop("arms", {}) or {}, current.pop("arms", {}) or {}
        diffs = [
            f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} now"
            for k in sorted(set(recorded) | set(current))
            if recorded.get(k) != current.get(k)
        ]
        diffs += [
            f"arm {arm}: {old_arms[arm]!r} there, {cfg!r} now"
            for arm, cfg in sorted(new_arms.items())
            if arm in old_arms and old_arms[arm] != cfg
        ]
        if diffs:
            raise ValueError(
                f"{out} holds trials of a run with other settings ({'; '.join(diffs)}); "
                "use another output folder, or the same settings to resume"
            )
        current = {**recorded, "arms": {**old_arms, **new_arms}}
        if new_arms.keys() <= old_arms.keys():
            return
    write_text(run_file, json.dumps(current, indent=1, sort_keys=True) + "\n")
