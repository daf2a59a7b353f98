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
from pytest_gradhealth.report.records import ProbeRecord, report_order

REPORT_SCHEMA = 1
TOOL = "pytest-gradhealth"


@dataclass
class Report:
    """A loaded report: its probes, the reference models measured beside them, and its header."""

    records: list[ProbeRecord]
    references: list[ProbeRecord]
    header: dict[str, Any]


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
) -> dict[str, Any]:
    """The whole report as plain, strict-JSON data; probes in a stable order (test id, then probe)."""
    return {
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


def write_json(path: Path, data: Any) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, then a rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_report(path: Path) -> Report:
    """Read a report or baseline written by `write_json`; every problem names the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFormatError(f"{path}: cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict) or data.get("tool") != TOOL or "probes" not in data:
        raise ReportFormatError(f"{path}: a JSON file, but not a {TOOL} report (no 'tool': '{TOOL}' and 'probes')")
    if data.get("schema") != REPORT_SCHEMA:
        raise ReportFormatError(
            f"{path}: report schema {data.get('schema')!r}; this version of {TOOL} reads schema {REPORT_SCHEMA}"
        )
    if not isinstance(data["probes"], list) or not isinstance(data.get("references", []), list):
        raise ReportFormatError(f"{path}: 'probes' and 'references' must be lists")
    records = [ProbeRecord.from_dict(p, f"{path}: probes[{i}]") for i, p in enumerate(data["probes"])]
    references = [
        ProbeRecord.from_dict(p, f"{path}: references[{i}]") for i, p in enumerate(data.get("references", []))
    ]
    header = {k: v for k, v in data.items() if k not in ("probes", "references")}
    return Report(records, references, header)
