"""The Phase 0 decision gate: the decision rule, its confidence interval, and the check `caspi train` runs.

The audit (scorers, stratified sample, report writing) builds on this; training calls `check_gate` before any
model is loaded, so a STOP report or a report made from another manifest refuses the run (exit 3) unless the user
forces it, and the override is recorded in the run's metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from caspi.errors import GateError

PROCEED, CAUTION, STOP = "PROCEED", "CAUTION", "STOP"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n, as fractions. Better than the normal approximation at
    the small shares (a few %) and sample sizes (hundreds) an audit works with: it never leaves [0, 1]."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound is exactly 0 or 1; the float formula lands a rounding error away.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def decide(low_quality_percentage: float, proceed_below: float = 10.0, stop_above: float = 15.0) -> str:
    """PROCEED below `proceed_below` %, STOP above `stop_above` %, CAUTION in between (bounds included)."""
    if low_quality_percentage < proceed_below:
        return PROCEED
    if low_quality_percentage > stop_above:
        return STOP
    return CAUTION


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (manifests are compared by content, not by name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GateRecord:
    """What the run's metadata records about the gate."""

    report: str
    decision: str
    low_quality_percentage: float
    forced: bool
    manifest_matches: bool

    def to_dict(self) -> dict:
        return asdict(self)


def check_gate(report_path: str | Path, train_manifest: str | Path, force: bool = False) -> GateRecord:
    """Refuse training on a STOP report or on a report made from another manifest, unless `force`.

    The training manifest matches when its sha256 equals the audited manifest's (`manifest_sha256`) or the
    cleaned manifest's (`cleaned_manifest_sha256`) recorded in the report.
    """
    report_path, train_manifest = Path(report_path), Path(train_manifest)
    if not report_path.is_file():
        raise GateError(f"{report_path}: Phase 0 report not found; run `caspi audit` first (or set gate.report: "
                        "null in the recipe to train without a gate)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        decision = report["decision"]
        pct = float(report["low_quality_percentage"])
        hashes = {report["manifest_sha256"], report.get("cleaned_manifest_sha256")}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise GateError(f"{report_path}: not a Phase 0 report (missing or bad field: {exc})") from None
    if not train_manifest.is_file():
        raise GateError(f"{train_manifest}: training manifest not found")
    matches = file_sha256(train_manifest) in hashes
    record = GateRecord(str(report_path), decision, pct, force, matches)
    if force:
        return record
    if decision == STOP:
        lo, hi = report.get("low_quality_ci95", [None, None])
        ci = f" (95 % CI {lo:.1f}–{hi:.1f} %)" if lo is not None and hi is not None else ""
        raise GateError(
            f"{report_path}: Phase 0 says STOP: {pct:.1f} % low-quality samples{ci} of "
            f"{report.get('total_samples', '?')} audited, above the STOP threshold. Clean the data, or pass "
            "--force-gate to train anyway (recorded in the run's metadata)."
        )
    if not matches:
        raise GateError(
            f"{report_path}: this report was made from another manifest than {train_manifest} (sha256 differs); "
            "re-run `caspi audit` on it, or pass --force-gate"
        )
    return record
