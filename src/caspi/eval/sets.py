"""`caspi eval --sets`: one model on the field's eval sets by name, one table over them, scored the way the
ivrit.ai leaderboard scores (its normaliser, corpus-level WER) with Caspi's own normaliser beside it.

    result = evaluate_sets("all", "eval/field", recipe.eval, model="runs/round2")
    result = evaluate_sets(["eval-d1", "kan"], "eval/field", sets_root="/data/mirror", model="runs/round2")
    print(render_sets(result))

For each set (`caspi.data.importers.sets.EVAL_SETS`):
    OUT/sets/<name>/manifest.jsonl.gz   the imported set (+ audio/, rejected.jsonl, import.json). import.json, written
                                        last, records the source it came from and the manifest's sha256: a rerun with
                                        the same source reuses the manifest instead of importing again
    OUT/<name>/leaderboard/             `caspi.eval.evaluate` with the leaderboard's normaliser: the model decodes here
    OUT/<name>/hypotheses.jsonl         that run's hypotheses (`id`, `hypothesis`)
    OUT/<name>/scoring/                 the same hypotheses scored with Caspi's normaliser (no second decode)
and over all of them OUT/sets.md, sets.csv and sets.json: per set its utterances, audio minutes, WER with the
leaderboard normaliser, WER and CER with ours, each with its summary's 95 % bootstrap interval, and the mean over
the evaluated sets (the unweighted mean of their rates, as the leaderboard and the seeds average; its interval from
`macro_bootstrap`, each set resampled within itself).

Corpus-level WER: evaluate's overall WER is Σ word errors / Σ reference words over a set's utterances, each aligned
on its own. That is what one `jiwer.process_words` over all of a set's normalised references and hypotheses returns
(jiwer aligns each pair separately and pools the counts), i.e. the leaderboard's figure; tests/eval/test_sets.py
checks the two agree.

With `sets="all"` a set that cannot be read here (no stand-in under the root, gated or unreachable on the hub) is a
row "not available: <why>", not an error; a set named explicitly that cannot be read is a `DataError` saying what to
do. A mean is comparable only with a mean over the same sets: the table says how many it covers.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caspi.config import EvalConfig
from caspi.data.cuts import file_sha256, read_manifest, write_jsonl, write_text_atomic
from caspi.data.importers.sets import (EVAL_SETS, EvalSet, EvalSetUnavailable, eval_set, resolve_sets_root,
                                       stand_in_files)
from caspi.data.ingest import import_source
from caspi.errors import ConfigError, DataError
from caspi.eval.bootstrap import macro_bootstrap
from caspi.eval.evaluate import evaluate, read_predictions

ALL = "all"
LEADERBOARD, SCORING = "leaderboard", "scoring"  # caspi.data.text normalisers: the leaderboard's, ours
MANIFEST, IMPORT_RECORD, HYPOTHESES = "manifest.jsonl.gz", "import.json", "hypotheses.jsonl"
# (key, normaliser, metric) of each figure in the table, in column order; RECORDED: also in sets.csv and sets.json
FIGURES = (("wer_leaderboard", LEADERBOARD, "wer"), ("wer_scoring", SCORING, "wer"), ("cer_scoring", SCORING, "cer"))
RECORDED = (*FIGURES, ("cer_leaderboard", LEADERBOARD, "cer"))


@dataclass
class SetsResult:
    out_dir: Path
    rows: list[dict]  # one per set asked for, in registry order: status "ok" or "not available"
    mean: dict | None  # over the "ok" rows; None when none was evaluated
    files: dict[str, Path] = field(default_factory=dict)  # md, csv, json


def set_names(sets: str | Sequence[str]) -> tuple[list[str], bool]:
    """(names in registry order, whether `all` was asked) from `all`, `a,b` or a list; `ConfigError` for an unknown
    or repeated name."""
    items = [s.strip() for s in (sets.split(",") if isinstance(sets, str) else sets) if s.strip()]
    if items == [ALL]:
        return list(EVAL_SETS), True
    if not items or ALL in items:
        raise ConfigError(f"--sets: give {ALL!r} or set names separated by commas ({', '.join(EVAL_SETS)})")
    for name in items:
        eval_set(name)  # unknown: ConfigError listing the known names
    if len(set(items)) != len(items):
        raise ConfigError(f"--sets: a set is named twice ({','.join(items)})")
    return [name for name in EVAL_SETS if name in items], False


def evaluate_sets(sets: str | Sequence[str], out_dir: str | Path, config: EvalConfig | None = None, *,
                  model: str | None = None, hypotheses: Mapping[str, str | Path] | None = None,
                  sets_root: str | Path | None = None, language: str | None = None, resamples: int = 1000,
                  seed: int = 0, workers: int = 2, progress: bool = True) -> SetsResult:
    """Import (or reuse) each named set, evaluate `model` on it, or score `hypotheses` (set name → JSONL of `id`,
    `hypothesis`), with both normalisers, and write the table over the sets (module docstring). `config`: a recipe's
    eval section (batch size, beams, new tokens; its normaliser is set per pass); `sets_root`: a stand-in root
    (else `$CASPI_EVAL_SETS`, else the hub); `language`: as for `evaluate`."""
    if (model is None) == (hypotheses is None):
        raise DataError("evaluate_sets: give either a model or hypotheses files, not both or neither")
    names, everything = set_names(sets)
    config = config or EvalConfig()
    out_dir = Path(out_dir)
    root = resolve_sets_root(sets_root)
    # Every set is imported (or found unavailable) before any decoding, so a missing set named explicitly stops the
    # run before the model has spent time on the others.
    manifests: dict[str, Path] = {}
    rows: dict[str, dict] = {}
    for name in names:
        entry = EVAL_SETS[name]
        try:
            manifests[name] = import_set(entry, out_dir / "sets" / name, root, workers=workers, progress=progress)
        except EvalSetUnavailable as exc:
            if not everything:
                raise
            rows[name] = {"set": name, "status": "not available", "reason": str(exc), **_where(entry)}
            _note(progress, f"{name}: not available, skipped ({_one_line(str(exc))})")
    if not manifests:
        reasons = "\n".join(f"  {_one_line(r['reason'])}" for r in rows.values())
        raise DataError(f"--sets {ALL}: none of the eval sets can be read here:\n{reasons}")
    missing = [n for n in manifests if hypotheses is not None and n not in hypotheses]
    if missing:
        raise DataError(f"evaluate_sets: no hypotheses file for {', '.join(missing)}")
    for name, manifest in manifests.items():
        rows[name] = _evaluate_one(EVAL_SETS[name], manifest, out_dir / name, config, model=model,
                                   hypotheses=None if hypotheses is None else hypotheses[name], language=language,
                                   resamples=resamples, seed=seed, progress=progress)
    ordered = [rows[name] for name in names]
    mean = _mean(ordered, out_dir, resamples, seed)
    result = SetsResult(out_dir, ordered, mean)
    result.files = _write_tables(result, model=model, root=root, config=config, resamples=resamples, seed=seed)
    return result


def import_set(entry: EvalSet, folder: Path, root: Path | None, *, workers: int = 2, progress: bool = True) -> Path:
    """`folder/manifest.jsonl.gz` of `entry`: reused when `folder/import.json` records the same source and the
    manifest's sha256, else imported (from the stand-in under `root`, or the hub). `EvalSetUnavailable` when the
    source cannot be read."""
    manifest, record_path = folder / MANIFEST, folder / IMPORT_RECORD
    source = _source(entry, root)
    if record_path.is_file() and manifest.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if (isinstance(record, dict) and record.get("source") == source
                and record.get("manifest_sha256") == file_sha256(manifest)):
            _note(progress, f"{entry.name}: reusing {manifest} ({record.get('kept')} utterances)")
            return manifest
    record_path.unlink(missing_ok=True)  # until the new import is complete the folder reads as incomplete
    result = import_source(entry, manifest, sets_root=root, workers=workers, progress=progress)
    _note(progress, f"{entry.name}: {result.summary()}")
    record = {"set": entry.name, "source": source, "manifest_sha256": file_sha256(manifest), "kept": result.kept,
              "rejected": result.rejected, "hours": result.hours}
    write_text_atomic(record_path, json.dumps(record, indent=2, ensure_ascii=False))
    return manifest


def _source(entry: EvalSet, root: Path | None) -> dict:
    """What an import of `entry` reads, comparably across runs: the registry's fields and the hub id, or the
    stand-in's files with their sizes and modification times (a changed mirror is imported again)."""
    source = {"hub_id": entry.hub_id, "split": entry.split, "audio_field": entry.audio_field,
              "text_field": entry.text_field, "id_field": entry.id_field, "domain": entry.domain}
    if root is None:
        return {**source, "from": "hub"}
    folder = root / entry.name
    files = {str(f.relative_to(folder)): [f.stat().st_size, f.stat().st_mtime_ns]
             for f in stand_in_files(entry, root)}
    return {**source, "from": str(folder.resolve()), "files": files}


def _evaluate_one(entry: EvalSet, manifest: Path, folder: Path, config: EvalConfig, *, model, hypotheses, language,
                  resamples, seed, progress) -> dict:
    """Decode once (leaderboard normaliser), score the same hypotheses with ours; the set's table row."""
    common = {"resamples": resamples, "seed": seed, "progress": progress}
    lb_config = config.model_copy(update={"normaliser": LEADERBOARD})
    if model is not None:
        leaderboard = evaluate(manifest, folder / LEADERBOARD, lb_config, model=model, language=language, **common)
        records, _ = read_predictions(folder / LEADERBOARD)
        hypotheses = write_jsonl(({"id": r["id"], "hypothesis": r["hypothesis"]} for r in records),
                                 folder / HYPOTHESES)
    else:
        leaderboard = evaluate(manifest, folder / LEADERBOARD, lb_config, hypotheses=str(hypotheses), **common)
    ours = evaluate(manifest, folder / SCORING, config.model_copy(update={"normaliser": SCORING}),
                    hypotheses=str(hypotheses), **common)
    summaries = {LEADERBOARD: leaderboard.summary["overall"], SCORING: ours.summary["overall"]}
    cuts = read_manifest(manifest)
    record = json.loads((manifest.parent / IMPORT_RECORD).read_text(encoding="utf-8"))
    row = {"set": entry.name, "status": "ok", **_where(entry), "utterances": len(cuts),
           "audio_minutes": sum(c.duration for c in cuts) / 60, "rejected_at_import": sum(record["rejected"].values()),
           "empty_hypotheses": leaderboard.summary["empty_hypotheses"]}
    for key, normaliser, metric in RECORDED:
        row[key] = summaries[normaliser][metric]
        row[f"{key}_ci95"] = summaries[normaliser][f"{metric}_ci95"]
    row["folders"] = {n: str(folder / n) for n in (LEADERBOARD, SCORING)}
    decoding = leaderboard.summary.get("decoding")
    if decoding is not None:
        row["real_time_factor"] = decoding.get("real_time_factor")
    return row


def _mean(rows: list[dict], out_dir: Path, resamples: int, seed: int) -> dict | None:
    """The unweighted mean over the evaluated sets of each figure, with a macro-bootstrap 95 % interval (each set's
    utterances resampled within the set, from its own stream)."""
    done = [r for r in rows if r["status"] == "ok"]
    if not done:
        return None
    mean: dict = {"set": "mean", "status": "ok", "sets": [r["set"] for r in done],
                  "utterances": sum(r["utterances"] for r in done),
                  "audio_minutes": sum(r["audio_minutes"] for r in done)}
    counts = {n: [read_predictions(out_dir / r["set"] / n)[1] for r in done] for n in (LEADERBOARD, SCORING)}
    sizes = [len(c.ref_words) for c in counts[LEADERBOARD]]
    groups = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])  # (n,) indices of each set's utterances
    for key, normaliser, metric in RECORDED:
        parts = counts[normaliser]
        errors = np.concatenate([c.word_errors if metric == "wer" else c.char_errors for c in parts])
        refs = np.concatenate([c.ref_words if metric == "wer" else c.ref_chars for c in parts])
        _, ci = macro_bootstrap(errors, refs, groups, resamples, seed)
        mean[key] = float(np.mean([r[key] for r in done]))
        mean[f"{key}_ci95"] = list(ci)
    return mean


# ---------------------------------------------------------------------------------------------------- tables

_HEADER = ("set", "utts", "audio min", "WER leaderboard", "95 % CI", "WER ours", "95 % CI", "CER ours", "95 % CI")


def _cells(row: dict) -> list[str]:
    if row["status"] != "ok":
        return [row["set"], _one_line(f"not available: {row['reason']}"), *[""] * (len(_HEADER) - 2)]
    name = f"mean of {len(row['sets'])} sets" if row["set"] == "mean" else row["set"]
    cells = [name, str(row["utterances"]), f"{row['audio_minutes']:.1f}"]
    for key, _, _ in FIGURES:
        lo, hi = row[f"{key}_ci95"]
        cells += [f"{row[key]:.3f}", f"{lo:.3f}–{hi:.3f}"]
    return cells


def render_sets(result: SetsResult) -> str:
    """The table as Markdown (also what `caspi eval --sets` prints)."""
    rows = [*result.rows, *([result.mean] if result.mean else [])]
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _write_tables(result: SetsResult, *, model, root, config: EvalConfig, resamples, seed) -> dict[str, Path]:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    source = f"stand-ins under {root}" if root is not None else "the Hugging Face hub"
    notes = [
        f"Model: {model or 'hypotheses files'}; sets read from {source}.",
        "WER leaderboard: the ivrit.ai leaderboard's normaliser (`for_leaderboard`), corpus-level (Σ errors / Σ "
        "reference words over the set, as one jiwer.process_words). WER/CER ours: Caspi's `for_scoring` on the same "
        "hypotheses. Intervals: 95 % bootstrap over utterances "
        f"({resamples} resamples, seed {seed}); the mean's resamples each set within itself.",
        f"Decoding: batch {config.batch_size}, beams {config.num_beams}, at most {config.max_new_tokens} new tokens.",
        "A mean compares only with a mean over the same sets.",
    ]
    notes += [f"{r['set']}: {r['rejected_at_import']} utterances rejected at import (listed in "
              f"sets/{r['set']}/rejected.jsonl) are not in its figures." for r in result.rows
              if r.get("rejected_at_import")]
    sets = "\n".join(f"- `{r['set']}`: {r['hub_id']} [{r['split']}], {r['description']}; licence: {r['licence']}"
                     for r in result.rows)
    md = f"# Eval sets\n\n{render_sets(result)}\n\n" + "\n".join(f"- {n}" for n in notes) + f"\n\n{sets}\n"
    files = {"md": out / "sets.md", "csv": out / "sets.csv", "json": out / "sets.json"}
    write_text_atomic(files["md"], md)
    write_text_atomic(files["csv"], _csv(result))
    summary = {"model": model, "sets_root": str(root) if root is not None else None, "normalisers":
               {"wer_leaderboard": LEADERBOARD, "wer_scoring": SCORING, "cer_scoring": SCORING},
               "wer": "corpus-level: sum of word errors / sum of reference words over a set", "resamples": resamples,
               "seed": seed, "sets": result.rows, "mean": result.mean}
    write_text_atomic(files["json"], json.dumps(summary, indent=2, ensure_ascii=False))
    return files


def _csv(result: SetsResult) -> str:
    columns = ["set", "status", "hub_id", "split", "utterances", "audio_minutes"]
    for key, _, _ in RECORDED:
        columns += [key, f"{key}_lo", f"{key}_hi"]
    columns += ["rejected_at_import", "empty_hypotheses", "sets_in_mean", "reason"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in [*result.rows, *([result.mean] if result.mean else [])]:
        flat = dict(row)
        for key, _, _ in RECORDED:
            if f"{key}_ci95" in row:
                flat[f"{key}_lo"], flat[f"{key}_hi"] = row[f"{key}_ci95"]
        if "sets" in row:
            flat["sets_in_mean"] = len(row["sets"])
        if "reason" in row:
            flat["reason"] = _one_line(row["reason"])
        writer.writerow(flat)
    return buf.getvalue()


def _where(entry: EvalSet) -> dict:
    return {"hub_id": entry.hub_id, "split": entry.split, "gated": entry.gated, "licence": entry.licence,
            "description": entry.description}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _note(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)
