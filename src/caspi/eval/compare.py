"""`caspi compare`: two systems scored on the same eval manifest, side by side, per domain and overall.

    result = compare("eval/round1", "eval/round2", "compare/r1-vs-r2", names=("round 1", "round 2"))
    result = compare_systems("runs/round1", "eval/round2", "compare/r1-vs-r2", manifest="data/eval.jsonl.gz")

`compare` takes two eval folders; `compare_systems` (what `caspi compare` calls) also takes a model for A or B and
evaluates it on `manifest` first, into OUT/eval-a or OUT/eval-b.

For each domain and overall, for WER and for CER: the rate of A and of B with their bootstrap intervals, the
difference B − A with a paired bootstrap interval and a two-sided p-value (paired bootstrap,
`caspi.eval.bootstrap.paired_bootstrap`), p-values adjusted across domains with Benjamini–Hochberg (WER and CER each a
family of their own), and a verdict: better / worse / no significant difference (adjusted p < `alpha`). Each domain
is resampled from its own independent stream. WER is the primary metric (`verdict`, `any_worse`); CER's keys are
prefixed `cer_`. Outputs: comparison.csv (seed 001's table first: dataset, round-1 WER, round-2 WER, improvement;
then the CER columns), .json, .md and a .png of per-domain WER bars with interval whiskers.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caspi.config import EvalConfig
from caspi.data.cuts import write_atomic
from caspi.errors import ConfigError, DataError
from caspi.eval.evaluate import PREDICTIONS, SUMMARY, evaluate, read_predictions
from caspi.eval.bootstrap import benjamini_hochberg, bootstrap_ci, independent_seeds, paired_bootstrap

BETTER, WORSE, SAME = "better", "worse", "no significant difference"


@dataclass
class CompareResult:
    rows: list[dict]
    out_dir: Path
    any_worse: bool
    names: tuple[str, str]  # A's and B's names in the tables


def _aligned(a_dir: Path, b_dir: Path):
    """Both systems' records and counts, in the same utterance order; mismatched ids are an error with counts."""
    a_records, a_counts = read_predictions(a_dir)
    b_records, b_counts = read_predictions(b_dir)
    a_ids, b_ids = [r["id"] for r in a_records], [r["id"] for r in b_records]
    only_a, only_b = sorted(set(a_ids) - set(b_ids)), sorted(set(b_ids) - set(a_ids))
    if only_a or only_b:
        raise DataError(
            f"{a_dir} and {b_dir} were scored on different utterances: {len(only_a)} only in A (e.g. "
            f"{', '.join(only_a[:3]) or '-'}), {len(only_b)} only in B (e.g. {', '.join(only_b[:3]) or '-'}); "
            "evaluate both on the same manifest"
        )
    b_index = {i: k for k, i in enumerate(b_ids)}
    order = np.array([b_index[i] for i in a_ids])
    for r_a, k in zip(a_records, order):
        r_b = b_records[k]
        if r_a["reference_normalised"] != r_b["reference_normalised"] or r_a["domain"] != r_b["domain"]:
            raise DataError(f"utterance {r_a['id']}: the two eval folders hold different references or domains "
                            "for it; were they made from different manifests or normalisers?")
    b_word_errors, b_char_errors = b_counts.word_errors[order], b_counts.char_errors[order]
    domains = [r["domain"] for r in a_records]
    return domains, a_counts, b_word_errors, b_char_errors


def compare(a_dir: str | Path, b_dir: str | Path, out_dir: str | Path, *, names: tuple[str, str] = ("A", "B"),
            resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> CompareResult:
    a_dir, b_dir, out_dir = Path(a_dir), Path(b_dir), Path(out_dir)
    domains, a, b_word, b_char = _aligned(a_dir, b_dir)
    d = np.asarray(domains)
    groups = [(name, d == name) for name in sorted(set(domains))] + [("overall", np.ones(len(domains), bool))]
    rows = []
    for (name, rows_mask), stream in zip(groups, independent_seeds(seed, len(groups))):
        row = {"dataset": name, "utterances": int(rows_mask.sum())}
        # WER keys unprefixed (seed 001's table), CER keys prefixed; both metrics resample the same utterances.
        for prefix, metric, ea, eb, refs in (("", "wer", a.word_errors, b_word, a.ref_words),
                                             ("cer_", "cer", a.char_errors, b_char, a.ref_chars)):
            ea, eb, refs = ea[rows_mask], eb[rows_mask], refs[rows_mask]
            paired = paired_bootstrap(ea, eb, refs, resamples=resamples, seed=stream)
            row.update({
                f"{metric}_a": paired.rate_a, f"{metric}_a_ci95": list(bootstrap_ci(ea, refs, resamples, stream)),
                f"{metric}_b": paired.rate_b, f"{metric}_b_ci95": list(bootstrap_ci(eb, refs, resamples, stream)),
                f"{prefix}difference": paired.difference, f"{prefix}difference_ci95": list(paired.ci),
                f"{prefix}improvement_points": 100.0 * (paired.rate_a - paired.rate_b),
                f"{prefix}p_value": paired.p_value,
            })
        rows.append(row)
    domain_rows = [r for r in rows if r["dataset"] != "overall"]
    for prefix in ("", "cer_"):
        for r, adjusted in zip(domain_rows, benjamini_hochberg([r[f"{prefix}p_value"] for r in domain_rows])):
            r[f"{prefix}p_adjusted"] = adjusted
        rows[-1][f"{prefix}p_adjusted"] = rows[-1][f"{prefix}p_value"]  # one test: nothing to adjust
        for r in rows:
            significant = r[f"{prefix}p_adjusted"] < alpha
            r[f"{prefix}verdict"] = SAME if not significant else BETTER if r[f"{prefix}difference"] < 0 else WORSE
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"a": str(a_dir), "b": str(b_dir), "names": list(names), "resamples": resamples, "seed": seed,
            "alpha": alpha, "test": "paired bootstrap over utterances (two-sided), each domain from its own "
                                    "random stream; Benjamini-Hochberg across domains, for WER and CER separately"}
    # Each output atomically (temp file, fsync, rename): an interrupted compare leaves no half-written table.
    write_atomic(out_dir / "comparison.json", lambda path: path.write_text(
        json.dumps({**meta, "rows": rows}, indent=2, ensure_ascii=False), encoding="utf-8"))
    write_atomic(out_dir / "comparison.csv", lambda path: _write_csv(path, rows, names))
    write_atomic(out_dir / "comparison.md", lambda path: path.write_text(render_markdown(rows, names, meta),
                                                                   encoding="utf-8"))
    write_atomic(out_dir / "comparison.png", lambda path: plot(rows, names, path))
    return CompareResult(rows, out_dir, any(r["verdict"] == WORSE for r in rows), tuple(names))


def compare_systems(a: str | Path, b: str | Path, out_dir: str | Path, *, manifest: str | Path | None = None,
                    config: EvalConfig | None = None, language: str | None = None,
                    names: tuple[str, str] | None = None, resamples: int = 1000, seed: int = 0,
                    alpha: float = 0.05, progress: bool = True) -> CompareResult:
    """`compare` of two systems, each an eval folder or a model (a Caspi run or checkpoint, an export, a hub id).

    A model is evaluated on `manifest` first (with `config` and `language`, as `evaluate` takes them) into
    OUT/eval-a or OUT/eval-b. A folder holding predictions.jsonl or summary.json is always taken for an eval
    folder, complete or not, so an interrupted eval is refused by name rather than loaded as a model. `names`
    default to the two paths' last parts. ConfigError when a model is given without `manifest`."""
    out_dir = Path(out_dir)
    folders = []
    for label, system in zip("ab", (a, b)):
        if (Path(system) / PREDICTIONS).is_file() or (Path(system) / SUMMARY).is_file():
            folders.append(Path(system))
            continue
        if manifest is None:
            raise ConfigError(f"compare: {system} is not an eval output folder; pass --manifest to evaluate it first")
        folder = out_dir / f"eval-{label}"
        evaluate(manifest, folder, config, model=str(system), language=language, resamples=resamples, seed=seed,
                 progress=progress)
        folders.append(folder)
    names = tuple(names) if names else (Path(a).name, Path(b).name)
    return compare(folders[0], folders[1], out_dir, names=names, resamples=resamples, seed=seed, alpha=alpha)


def _write_csv(path: Path, rows: list[dict], names: tuple[str, str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", f"{names[0]} WER", f"{names[1]} WER", "improvement (points)",
                         "difference 95% CI low", "difference 95% CI high", "p", "p (BH)", "verdict", "utterances",
                         f"{names[0]} CER", f"{names[1]} CER", "CER improvement (points)",
                         "CER difference 95% CI low", "CER difference 95% CI high", "CER p", "CER p (BH)",
                         "CER verdict"])
        for r in rows:
            writer.writerow([r["dataset"], f"{r['wer_a']:.4f}", f"{r['wer_b']:.4f}", f"{r['improvement_points']:.2f}",
                             f"{r['difference_ci95'][0]:.4f}", f"{r['difference_ci95'][1]:.4f}",
                             f"{r['p_value']:.4g}", f"{r['p_adjusted']:.4g}", r["verdict"], r["utterances"],
                             f"{r['cer_a']:.4f}", f"{r['cer_b']:.4f}", f"{r['cer_improvement_points']:.2f}",
                             f"{r['cer_difference_ci95'][0]:.4f}", f"{r['cer_difference_ci95'][1]:.4f}",
                             f"{r['cer_p_value']:.4g}", f"{r['cer_p_adjusted']:.4g}", r["cer_verdict"]])


def render_markdown(rows: list[dict], names: tuple[str, str], meta: dict) -> str:
    a, b = names
    lines = [f"# {a} vs {b}"]
    for metric, prefix in (("WER", ""), ("CER", "cer_")):
        key = metric.lower()
        lines += ["", f"## {metric}", "",
                  f"| dataset | utterances | {a} {metric} | {b} {metric} | improvement | B − A (95 % CI) | p (BH) | "
                  "verdict |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            lo, hi = r[f"{prefix}difference_ci95"]
            lines.append(f"| {r['dataset']} | {r['utterances']} | {100 * r[f'{key}_a']:.1f} % | "
                         f"{100 * r[f'{key}_b']:.1f} % | {r[f'{prefix}improvement_points']:+.1f} pts | "
                         f"{100 * r[f'{prefix}difference']:+.1f} ({100 * lo:+.1f} … {100 * hi:+.1f}) | "
                         f"{r[f'{prefix}p_adjusted']:.3g} | {r[f'{prefix}verdict']} |")
    lines += ["", f"Test: {meta['test']}; {meta['resamples']} resamples, seed {meta['seed']}, α = {meta['alpha']}. "
              "Improvement = A − B in points of WER or CER (positive: B is better).", ""]
    return "\n".join(lines)


def plot(rows: list[dict], names: tuple[str, str], path: Path) -> Path:
    """Per-domain WER bars of A and B with their 95 % intervals as whiskers; the verdict under each group."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 4.2))
    for offset, key, label, colour in ((-width / 2, "a", names[0], "#8a9bb0"), (width / 2, "b", names[1], "#2f6db5")):
        values = np.array([100 * r[f"wer_{key}"] for r in rows])
        ci = np.array([[100 * r[f"wer_{key}_ci95"][0], 100 * r[f"wer_{key}_ci95"][1]] for r in rows])
        err = np.vstack([values - ci[:, 0], ci[:, 1] - values])
        ax.bar(x + offset, values, width, label=label, color=colour, yerr=err, capsize=3)
    ax.set_xticks(x, [f"{r['dataset']}\n{r['verdict']}" for r in rows], fontsize=8)
    ax.set_ylabel("WER (%)")
    ax.set_title(f"{names[0]} vs {names[1]}: WER per domain, 95 % bootstrap intervals")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render_table(rows: list[dict], names: tuple[str, str]) -> str:
    a, b = names
    lines = []
    for metric, prefix in (("WER", ""), ("CER", "cer_")):
        key = metric.lower()
        lines.append(f"{metric + ' by dataset':<14} {a[:10]:>10} {b[:10]:>10} {'B−A':>8} {'95% CI':>17} "
                     f"{'p(BH)':>8}  verdict")
        for r in rows:
            lo, hi = r[f"{prefix}difference_ci95"]
            lines.append(f"{r['dataset']:<14} {r[f'{key}_a']:>10.3f} {r[f'{key}_b']:>10.3f} "
                         f"{r[f'{prefix}difference']:>+8.3f} {f'{lo:+.3f}…{hi:+.3f}':>17} "
                         f"{r[f'{prefix}p_adjusted']:>8.3g}  {r[f'{prefix}verdict']}")
    return "\n".join(lines)
