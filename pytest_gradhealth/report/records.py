"""`ProbeRecord`: one probe measured in a test, as recorded on the test's report, with its verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_gradhealth.errors import ReportFormatError
from pytest_gradhealth.metrics import columns
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.verdicts import VERDICTS, judge


@dataclass
class ProbeRecord:
    """A probe, the test that measured it, the check an assertion applied (None for a plain probe), the verdict."""

    test: str
    probe: str
    profile: GradientProfile
    verdict: str
    check: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """Identifies the probe across runs: the test id and the probe's name within the test."""
        return f"{self.test} [{self.probe}]"

    @classmethod
    def from_raw(
        cls,
        test: str,
        raw: Mapping[str, Any],
        min_ratio: float,
        max_ratio: float,
        profile: GradientProfile | None = None,
    ) -> ProbeRecord:
        """From the plain data the recorder makes (`profile`: the live profile it came from, when at hand);
        unjudged probes get the session's verdict."""
        profile = profile or GradientProfile.from_dict(raw["profile"])
        check = raw.get("check")
        verdict = check["verdict"] if check else judge(profile, min_ratio, max_ratio)
        return cls(test=test, probe=str(raw["probe"]), profile=profile, verdict=verdict, check=check)

    def junit_properties(self) -> list[tuple[str, str]]:
        """The probe's figures as short JUnit XML properties: gradhealth.<probe>.ratio = 0.0123, ..."""
        figures = {"verdict": self.verdict, "seq_len": str(self.profile.seq_len)}
        figures.update({m.name: m.show(self.profile) for m in columns()})
        return [(f"gradhealth.{self.probe}.{name}", value) for name, value in figures.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "probe": self.probe,
            "verdict": self.verdict,
            "check": self.check,
            "profile": self.profile.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ProbeRecord:
        if not isinstance(data, Mapping) or not {"test", "probe", "verdict", "profile"} <= set(data):
            raise ReportFormatError(f"{where}: expected an object with test, probe, verdict and profile")
        if data["verdict"] not in VERDICTS:
            raise ReportFormatError(f"{where}: unknown verdict {data['verdict']!r}; expected one of {VERDICTS}")
        try:
            profile = GradientProfile.from_dict(data["profile"])
        except ReportFormatError as exc:
            raise ReportFormatError(f"{where}: {exc}") from None
        return cls(str(data["test"]), str(data["probe"]), profile, data["verdict"], data.get("check"))


def report_order(record: ProbeRecord) -> tuple[str, str]:
    """The order of probes in a report and its plots: by test id, then by probe name."""
    return (record.test, record.probe)


def worst_first(records: list[ProbeRecord]) -> list[ProbeRecord]:
    """Sorted by verdict severity, then by how little gradient reaches the first step; ties keep their order."""

    def order(record: ProbeRecord) -> tuple[int, float]:
        ratio = record.profile.ratio
        return (VERDICTS.index(record.verdict), ratio if ratio == ratio else -1.0)

    return sorted(records, key=order)


def reference_key(p: GradientProfile) -> tuple:
    """What a reference shares with the probes it stands beside: sizes, seq_len and the probe's options."""
    return (p.input_size, p.hidden_size, p.seq_len, p.batch_size, p.seed, p.dtype, p.device, p.measure, p.mode)
