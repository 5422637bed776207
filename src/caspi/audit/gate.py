"""The Phase 0 decision gate: the decision rule, its confidence interval, and the check `caspi train` runs.

The audit (scorers, stratified sample, report writing) builds on this; training calls `check_gate` before any
model is loaded, so a STOP report or a report made from another manifest refuses the run (exit 3) unless the user
forces it, and the override is recorded in the run's metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from caspi.data.cuts import file_sha256  # noqa: F401 - re-exported: the gate compares manifests by it
from caspi.errors import GateError

PROCEED, CAUTION, STOP = "PROCEED", "CAUTION", "STOP"


Z95 = 1.959963984540054  # two-sided 95 % normal quantile (scipy.stats.norm.ppf(0.975))


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n, as fractions (scipy's). Better than the normal approximation
    at the small shares (a few %) and sample sizes (hundreds) an audit works with: it never leaves [0, 1]."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _wilson_share(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval for a share p observed on a (possibly fractional) effective sample size n, which scipy's
    binomtest (integer k, n) cannot take."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 the bound is exactly 0 or 1; the float formula lands a rounding error away.
    return (0.0 if p <= 0 else max(0.0, centre - half)), (1.0 if p >= 1 else min(1.0, centre + half))


@dataclass(frozen=True)
class Stratum:
    """One stratum (domain) of the audit's sample: `population` samples in the manifest, `sampled` of them scored,
    `bad` of those counted low quality (may be fractional: soft flags net of expected false alarms)."""

    population: int
    sampled: int
    bad: float


@dataclass(frozen=True)
class StratifiedEstimate:
    share: float  # estimated low-quality share of the manifest, a fraction
    ci95: tuple[float, float]
    design_effect: float  # variance of the stratified estimate / that of a simple random sample of the same size
    effective_samples: float  # sampled / design effect: the n that Wilson's interval is computed on


def stratified_share(strata: list[Stratum]) -> StratifiedEstimate:
    """The share of bad samples in the manifest, from a sample stratified by domain, with a 95 % interval.

    Estimate (post-stratified): p̂ = Σ W_h p_h, with W_h = N_h / N the stratum's share of the manifest and p_h its
    sampled share. With proportional allocation (or every sample scored) this is the raw sample share; with seed
    001's 40/40/20 mix or `audit.domain_shares` it undoes the over-sampling of some domains.

    Interval: Wilson's score interval on the effective sample size n_eff = n / deff (Kish), where the design effect
    deff = Var_strat / Var_srs, Var_strat = Σ W_h² p_h (1 − p_h) / n_h and Var_srs = p̂ (1 − p̂) / n (Korn &
    Graubard 1998). Wilson rather than p̂ ± 1.96·√Var_strat because audit shares are small (a few %) and strata
    small: the normal interval then dips below 0 and is too short on the side that decides a STOP. deff is
    floored at 1 (taken as 1 when p̂ is 0 or 1, where the sample carries no variance to compare), so a stratified
    sample never claims more precision than a simple random sample of its size: with proportional allocation the
    interval is exactly the plain Wilson interval. No finite-population correction: the flags themselves are
    noisy measurements, and a whole-manifest audit (`--all`) should not report a zero-width interval.
    """
    strata = [s for s in strata if s.sampled > 0]
    if not strata:
        raise ValueError("stratified_share needs at least one sampled stratum")
    total = sum(s.population for s in strata)
    n = sum(s.sampled for s in strata)
    weights = [s.population / total for s in strata]
    shares = [s.bad / s.sampled for s in strata]
    p = sum(w * q for w, q in zip(weights, shares))
    var = sum(w * w * q * (1 - q) / s.sampled for w, q, s in zip(weights, shares, strata))
    srs = p * (1 - p) / n
    deff = max(1.0, var / srs) if srs > 0 else 1.0
    n_eff = n / deff
    return StratifiedEstimate(p, _wilson_share(p, n_eff), deff, n_eff)


def decide(low_quality_percentage: float, proceed_below: float = 10.0, stop_above: float = 15.0) -> str:
    """PROCEED below `proceed_below` %, STOP above `stop_above` %, CAUTION in between (bounds included)."""
    if low_quality_percentage < proceed_below:
        return PROCEED
    if low_quality_percentage > stop_above:
        return STOP
    return CAUTION


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
