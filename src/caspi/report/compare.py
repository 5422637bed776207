"""The Round 1 vs Round 2 section: a `caspi compare` folder's per-domain WER and CER with their intervals, the
paired differences and verdicts (comparison.json, `caspi.eval.compare`), and its plot (comparison.png, copied)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from caspi.errors import DataError
from caspi.eval.compare import BETTER, WORSE
from caspi.report.commands import read_commands

COMPARISON, PLOT = "comparison.json", "comparison.png"
_ROW_KEYS = ("dataset", "wer_a", "wer_b", "cer_a", "cer_b", "verdict", "cer_verdict")


@dataclass
class MetricCells:
    a: str  # "12.3 % (10.1–14.6)"
    b: str
    difference: str  # "−4.1 pts (−6.0 … −2.2)", B − A
    p: str  # Benjamini–Hochberg adjusted
    verdict: str
    tone: str  # "better" / "worse" / "same": the verdict's colour


@dataclass
class CompareRow:
    dataset: str
    utterances: int
    wer: MetricCells
    cer: MetricCells


@dataclass
class CompareSection:
    folder: Path
    names: tuple[str, str]
    rows: list[CompareRow]
    meta: dict
    plot: str | None  # the plot's path relative to the report folder
    commands: list[dict] = field(default_factory=list)


def read_compare(folder: Path, out_dir: Path, index: int) -> CompareSection:
    path = folder / COMPARISON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        raw_rows, names = data["rows"], tuple(data.get("names") or ("A", "B"))
        for n, r in enumerate(raw_rows):
            missing = [k for k in _ROW_KEYS if k not in r]
            if missing:
                raise KeyError(f"row {n} lacks {', '.join(missing)}")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a comparison of `caspi compare` ({exc})") from exc
    rows = [CompareRow(str(r["dataset"]), int(r.get("utterances", 0)), _cells(r, "wer", ""), _cells(r, "cer", "cer_"))
            for r in raw_rows]
    plot = None
    if (folder / PLOT).is_file():
        plot = f"comparison-{index}.png"
        shutil.copyfile(folder / PLOT, out_dir / plot)
    meta = {k: v for k, v in data.items() if k != "rows"}
    return CompareSection(folder, (str(names[0]), str(names[1])), rows, meta, plot, read_commands(folder))


def _cells(r: dict, metric: str, prefix: str) -> MetricCells:
    def rate(key: str) -> str:
        ci = r.get(f"{key}_ci95")
        text = f"{100 * r[key]:.1f} %"
        return text + (f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else "")

    diff, ci = r.get(f"{prefix}difference"), r.get(f"{prefix}difference_ci95")
    difference = "—" if diff is None else f"{100 * diff:+.1f} pts" + (
        f" ({100 * ci[0]:+.1f} … {100 * ci[1]:+.1f})" if ci else "")
    p = r.get(f"{prefix}p_adjusted")
    verdict = str(r[f"{prefix}verdict"])
    tone = "better" if verdict == BETTER else "worse" if verdict == WORSE else "same"
    return MetricCells(rate(f"{metric}_a"), rate(f"{metric}_b"), difference.replace("-", "−"),
                       "—" if p is None else f"{p:.3g}", verdict, tone)
