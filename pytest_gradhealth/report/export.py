"""The JSON report (also the baseline format): build, write atomically, and load with clear errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_gradhealth.errors import ReportFormatError
from pytest_gradhealth.report import schema
from pytest_gradhealth.report.baseline import Scope
from pytest_gradhealth.report.records import ProbeRecord, report_order

REPORT_SCHEMA = 1
TOOL = "pytest-gradhealth"


@dataclass
class Report:
    """A loaded report: its probes, the reference models measured beside them, and the tests its run covered."""

    records: list[ProbeRecord]
    references: list[ProbeRecord]
    scope: Scope


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(folder: Path) -> str | None:
    """The commit checked out in `folder`, when it is inside a git repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_report(
    records: Sequence[ProbeRecord],
    references: Sequence[ProbeRecord],
    settings: Mapping[str, Any],
    folder: Path,
    scope: Scope | None = None,
) -> dict[str, Any]:
    """The whole report as plain, strict-JSON data; probes in a stable order (test id, then probe). `scope` says
    which tests the run covered, so that a later comparison tells removed probes from probes not run."""
    report = {
        "schema": REPORT_SCHEMA,
        "tool": TOOL,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "pytest": _version("pytest"),
            "torch": _version("torch"),
            "numpy": _version("numpy"),
            "pytest_gradhealth": _version("pytest-gradhealth"),
            "devices": sorted({r.profile.device for r in records}),
            "git_commit": git_commit(folder),
        },
        "settings": dict(settings),
        "probes": [r.to_dict() for r in sorted(records, key=report_order)],
        "references": [r.to_dict() for r in references],
    }
    if scope is not None and scope.files is not None:
        report["scope"] = {
            "full": scope.full,
            "ran": sorted(scope.ran),
            "collected": sorted(scope.collected),
            "files": sorted(scope.files),
        }
    return report


def write_json(path: Path, data: Any, *, replace: bool = True) -> None:
    """Write `data` as strict JSON to `path`, atomically (see `write_text`)."""
    write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n", replace=replace)


def write_text(path: Path, content: str, *, replace: bool = True) -> None:
    """Write `content` to `path` atomically: a temporary file in the same folder, synced, then renamed over the target
    or, unless `replace`, linked to a name that must not exist yet (`FileExistsError` when it does).

    A symbolic link at `path` stays: its target is written. The file gets the mode a new file gets under the umask
    (0644 under umask 022), or keeps the mode of the file it replaces."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _create(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _create(tmp: str, path: Path) -> None:
    """Give the written file `tmp` the name `path`, which must not exist: a hard link fails atomically if it does."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name first, then move the content onto it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(tmp, path)


def _mode_for(path: Path) -> int:
    """The permission bits `path` has, or those a new file gets under the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _no_constant(token: str) -> Any:
    raise ReportFormatError(f"{token} is not JSON (a non-finite number is written as the string '{token}')")


def load_report(path: Path) -> Report:
    """Read a report or baseline written by `write_json`; every problem names the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFormatError(f"{path}: cannot be read: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise ReportFormatError(f"{path}: not a report: nested too deeply") from None
    except ReportFormatError as exc:
        raise ReportFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("tool") != TOOL or "probes" not in data:
        raise ReportFormatError(f"{path}: a JSON file, but not a {TOOL} report (no 'tool': '{TOOL}' and 'probes')")
    if data.get("schema") != REPORT_SCHEMA:
        raise ReportFormatError(
            f"{path}: report schema {data.get('schema')!r}; this version of {TOOL} reads schema {REPORT_SCHEMA}"
        )
    try:
        schema.report(data)
        records = [ProbeRecord.from_dict(p, f"probes[{i}]") for i, p in enumerate(data["probes"])]
        references = [ProbeRecord.from_dict(p, f"references[{i}]") for i, p in enumerate(data.get("references", []))]
    except ReportFormatError as exc:
        raise ReportFormatError(f"{path}: {exc}") from None
    scope = data.get("scope")
    run = Scope()
    if scope is not None:
        run = Scope(
            full=scope.get("full", True),
            ran=frozenset(scope.get("ran", ())),
            collected=frozenset(scope.get("collected", ())),
            files=frozenset(scope.get("files", ())),
        )
    return Report(records, references, run)
