"""`caspi eval`: transcribe an eval manifest with a model (or read another system's hypotheses) and score it per
domain with the one Hebrew normaliser.

    result = evaluate("data/eval.jsonl.gz", "eval/round2", recipe.eval, model="runs/round2")
    result = evaluate("data/eval.jsonl.gz", "eval/vllm", hypotheses="vllm.jsonl")  # EvalConfig() defaults

Outputs in DIR:
    predictions.jsonl   per utterance: id, domain, reference, hypothesis, both normalised, word and character
                        substitutions / deletions / insertions and reference lengths; `loop` (the hypothesis is a
                        repetition loop, `caspi.longform.is_loop`); `chunks` ([[start_s, end_s, cut], ...]) for an
                        utterance longer than `eval.chunk_seconds`, which was decoded in chunks
    summary.json        per domain and overall (micro over words, macro over domains): WER and CER with 95 %
                        bootstrap intervals (utterances resampled, seeded), counts, `loops` (also per domain), the
                        model, throughput and `decoding.chunked_utterances` / `decoding.chunks`

Clips up to `eval.chunk_seconds` are decoded whole in duration-sorted batches, as they always were; longer ones go
through `caspi.longform.decode_long` (cut at silero-vad silences, chunks of all long recordings batched together,
joined in order), a group of at most `LONG_GROUP_SECONDS` of audio in memory at a time. Folders written before
`loop` and `chunks` existed read as before.

Both files are written atomically (temp file, fsync, rename), summary.json last: it records the predictions' count
and sha256, so it marks the folder complete. `read_predictions` (and so `caspi compare`) accepts only a complete
folder whose predictions match that record, and names the file and line of anything malformed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caspi.config import EvalConfig
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio, read_manifest, write_jsonl, write_text_atomic
from caspi.data.text import NORMALISERS
from caspi.errors import DataError
from caspi.eval.bootstrap import bootstrap_ci, macro_bootstrap, percentile_ci
from caspi.longform import chunk_limits, decode_long, is_loop
from caspi.models.loading import load_model, trained_language
from caspi.progress import progress as show_progress
from caspi.scoring import UtteranceCounts, rate, utterance_counts

PREDICTIONS, SUMMARY = "predictions.jsonl", "summary.json"
# Seconds of long recordings loaded and decoded together (their chunks batched across them): 1 h of 16 kHz float32
# is 230 MB; eval-d1's 17 long recordings fit in one or two groups.
LONG_GROUP_SECONDS = 3600.0


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict


def evaluate(manifest: str | Path, out_dir: str | Path, config: EvalConfig | None = None, *,
             model: str | None = None, hypotheses: str | None = None, language: str | None = None,
             resamples: int = 1000, seed: int = 0, progress: bool = True) -> EvalResult:
    """Score `model` (a Caspi run or checkpoint, an exported folder or a hub id) or a `hypotheses` JSONL file
    (`id` — or the audio file's stem — and `hypothesis` per line) on `manifest`; write predictions and summary.
    `config`: a recipe's eval section (normaliser, batch size, beams, new tokens); None: its defaults.
    `language`: the decoding prompt's language (a recipe's `model.language`) for an export or hub id; a Caspi run
    decodes in the language it was trained with; None: the family's default (Hebrew)."""
    if (model is None) == (hypotheses is None):
        raise DataError("evaluate: give either a model or a hypotheses file, not both or neither")
    config = config or EvalConfig()
    normaliser = config.normaliser
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = sorted(read_manifest(manifest), key=lambda c: c.id)
    if not cuts:
        raise DataError(f"{manifest}: the manifest holds no cuts")
    refs = [cut_text(c) for c in cuts]
    domains = [cut_domain(c) for c in cuts]
    info: dict = {"manifest": str(manifest), "normaliser": normaliser}
    chunks: list[list | None] = [None] * len(cuts)
    chunk_loops = [False] * len(cuts)
    if model is not None:
        hyps, chunks, chunk_loops, info["decoding"] = _transcribe(model, cuts, config, language, progress)
        info["model"] = str(model)
    else:
        hyps, info["hypotheses_file"] = _read_hypotheses(Path(hypotheses), cuts), str(hypotheses)
    # A loop inside one chunk of a long recording may be a small share of the whole text: its chunk's flag counts.
    loops = [looped or is_loop(h, config.loop_max_ngram, config.loop_min_repeats, config.loop_min_share)
             for h, looped in zip(hyps, chunk_loops)]
    counts = utterance_counts(refs, hyps, normaliser)
    summary = summarise(counts, domains, resamples=resamples, seed=seed)
    summary.update(info, empty_hypotheses=sum(not h.strip() for h in hyps), loops=sum(loops))
    for name, entry in summary["domains"].items():
        entry["loops"] = sum(loop for loop, d in zip(loops, domains) if d == name)
    # An earlier eval's summary goes first: until the new one is written the folder reads as incomplete, never as
    # old summary + new predictions.
    (out_dir / SUMMARY).unlink(missing_ok=True)
    _write_predictions(out_dir / PREDICTIONS, cuts, domains, refs, hyps, counts, normaliser, loops, chunks)
    summary["predictions"] = {"file": PREDICTIONS, "utterances": len(cuts),
                              "sha256": hashlib.sha256((out_dir / PREDICTIONS).read_bytes()).hexdigest()}
    write_text_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False))
    return EvalResult(out_dir, summary)


def _transcribe(spec: str, cuts: list, config: EvalConfig, language: str | None,
                progress: bool) -> tuple[list[str], list[list | None], list[bool], dict]:
    """Hypotheses in the order of `cuts`, each chunked utterance's chunks ([start_s, end_s, cut], else None), whether
    one of its chunks is a loop (`LongResult.loop`; False for clips decoded whole), and the decoding record
    (settings, throughput, chunk counts). Clips up to `chunk_seconds` are decoded whole in
    duration-sorted batches (little padding); longer ones in chunks (`caspi.longform.decode_long`)."""
    import torch

    batch_size, num_beams = config.batch_size, config.num_beams
    model, processor, family = load_model(spec)
    max_s, _ = chunk_limits(family, config)  # ConfigError before any decoding when the family cannot take the cap
    language = trained_language(spec) or language
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    order = sorted(range(len(cuts)), key=lambda i: cuts[i].duration)
    whole = [i for i in order if cuts[i].duration <= max_s]
    long = [i for i in order if cuts[i].duration > max_s]
    hyps: list[str | None] = [None] * len(cuts)
    chunks: list[list | None] = [None] * len(cuts)
    loops = [False] * len(cuts)
    audio_s = 0.0
    started = time.perf_counter()
    bar = show_progress(len(cuts), "eval", enabled=progress)
    for start in range(0, len(whole), batch_size):
        rows = whole[start:start + batch_size]
        clips = [load_cut_audio(cuts[i]) for i in rows]
        audio_s += sum(len(c) for c in clips) / 16000
        out = family.decode(model, processor, clips, max_new_tokens=config.max_new_tokens, batch_size=len(clips),
                            num_beams=num_beams, language=language, no_repeat_ngram_size=config.no_repeat_ngram_size,
                            repetition_penalty=config.repetition_penalty)
        for i, h in zip(rows, out):
            hyps[i] = h
        bar.update(len(rows))
    chunk_count = 0
    for group in _groups(long, cuts):
        clips = [load_cut_audio(cuts[i]) for i in group]
        audio_s += sum(len(c) for c in clips) / 16000
        results = decode_long(family, model, processor, clips, config=config, language=language)
        del clips  # the next group's audio replaces this one's, not joins it
        for i, result in zip(group, results):
            hyps[i], loops[i] = result.text, result.loop
            if result.chunked:
                chunks[i] = [[round(c["start_s"], 3), round(c["end_s"], 3), c["cut"]] for c in result.chunks]
                chunk_count += len(result.chunks)
        bar.update(len(group))
    bar.close()
    seconds = time.perf_counter() - started
    decoding = {"device": str(device), "batch_size": batch_size, "num_beams": num_beams,
                "no_repeat_ngram_size": config.no_repeat_ngram_size, "repetition_penalty": config.repetition_penalty,
                "language": language or "Hebrew", "seconds": seconds,
                "clips_per_s": len(cuts) / seconds, "real_time_factor": seconds / audio_s if audio_s else None,
                "chunk_seconds": max_s, "chunked_utterances": sum(c is not None for c in chunks),
                "chunks": chunk_count}
    print(f"decoded {len(cuts)} clips ({audio_s / 60:.1f} min of audio; {decoding['chunked_utterances']} in "
          f"{chunk_count} chunks) in {seconds:.1f} s: {len(cuts) / seconds:.1f} clips/s, real-time factor "
          f"{decoding['real_time_factor']:.3f}", file=sys.stderr)
    return [h or "" for h in hyps], chunks, loops, decoding


def _groups(rows: list[int], cuts: list) -> list[list[int]]:
    """`rows` (indices of long cuts) in consecutive groups of at most `LONG_GROUP_SECONDS` of audio (at least one
    cut each): the audio decode_long holds at once."""
    groups: list[list[int]] = []
    total = 0.0  # seconds in the last group
    for i in rows:
        if groups and total + cuts[i].duration <= LONG_GROUP_SECONDS:
            groups[-1].append(i)
            total += cuts[i].duration
        else:
            groups.append([i])
            total = cuts[i].duration
    return groups


def _read_hypotheses(path: Path, cuts: list) -> list[str]:
    """Hypotheses for every cut from JSONL (`id` or the audio file stem, `hypothesis`); every mismatch is an
    error that says how many and which."""
    if not path.is_file():
        raise DataError(f"{path}: hypotheses file not found")
    by_key: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key, hyp = str(record["id"]), record["hypothesis"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: expected a JSON object with `id` and `hypothesis` ({exc})") from None
        if not isinstance(hyp, str):
            raise DataError(f"{path}:{number}: `hypothesis` must be a string, got {type(hyp).__name__}")
        if key in by_key:
            raise DataError(f"{path}:{number}: id {key!r} appears twice")
        by_key[key] = hyp
    hyps, missing, used = [], [], set()
    for cut in cuts:
        stem = Path(str(cut.recording.sources[0].source)).stem if cut.recording is not None else None
        key = cut.id if cut.id in by_key else stem if stem in by_key else None
        if key is None:
            missing.append(cut.id)
            hyps.append("")
        else:
            used.add(key)
            hyps.append(by_key[key])
    if missing:
        raise DataError(f"{path}: no hypothesis for {len(missing)} of {len(cuts)} manifest utterances (e.g. "
                        f"{', '.join(missing[:3])}); ids must match the manifest's cut ids or audio file stems")
    extra = sorted(set(by_key) - used)
    if extra:
        raise DataError(f"{path}: {len(extra)} hypotheses match no utterance of the manifest (e.g. "
                        f"{', '.join(extra[:3])})")
    return hyps


def _write_predictions(path: Path, cuts, domains, refs, hyps, counts: UtteranceCounts, normaliser: str,
                       loops: list[bool], chunks: list[list | None]) -> None:
    norm = NORMALISERS[normaliser]
    records = (
        {
            "id": cut.id, "domain": domains[i], "reference": refs[i], "hypothesis": hyps[i],
            "reference_normalised": norm(refs[i]), "hypothesis_normalised": norm(hyps[i]),
            "word_substitutions": int(counts.word_sub[i]), "word_deletions": int(counts.word_del[i]),
            "word_insertions": int(counts.word_ins[i]), "ref_words": int(counts.ref_words[i]),
            "char_substitutions": int(counts.char_sub[i]), "char_deletions": int(counts.char_del[i]),
            "char_insertions": int(counts.char_ins[i]), "ref_chars": int(counts.ref_chars[i]),
            "loop": loops[i], **({"chunks": chunks[i]} if chunks[i] is not None else {}),
        }
        for i, cut in enumerate(cuts)
    )
    write_jsonl(records, path)  # temp file, fsync, rename


_COUNT_KEYS = ("word_substitutions", "word_deletions", "word_insertions", "ref_words", "char_substitutions",
               "char_deletions", "char_insertions", "ref_chars")
_TEXT_KEYS = ("id", "domain", "reference_normalised")


def read_predictions(folder: str | Path) -> tuple[list[dict], UtteranceCounts]:
    """The records of a complete eval folder's predictions.jsonl and their counts as arrays.

    DataError, naming the file (and line), when the folder is not an eval output, is incomplete (no summary.json:
    the eval was interrupted), its predictions are malformed, or they differ from what summary.json recorded
    (truncated or edited after the eval)."""
    folder = Path(folder)
    path, summary_path = folder / PREDICTIONS, folder / SUMMARY
    if not path.is_file() and not summary_path.is_file():
        raise DataError(f"{folder}: not a `caspi eval` output folder (no {PREDICTIONS}, no {SUMMARY})")
    if not summary_path.is_file():
        raise DataError(f"{folder}: incomplete eval folder: {PREDICTIONS} without {SUMMARY}, which `caspi eval` "
                        "writes last; the eval was interrupted or is still running. Run it again")
    if not path.is_file():
        raise DataError(f"{path}: missing; {summary_path} says it belongs there. Run the eval again")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{summary_path}: not valid JSON ({exc}); run the eval again") from None
    data = path.read_bytes()
    records, seen = [], set()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON object ({exc.msg}); the file is damaged or truncated. "
                            "Run the eval again") from None
        problem = _record_problem(record)
        if problem:
            raise DataError(f"{path}:{number}: {problem}")
        if record["id"] in seen:
            raise DataError(f"{path}:{number}: utterance id {record['id']!r} appears twice")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise DataError(f"{path}: holds no predictions")
    expected = summary.get("predictions") if isinstance(summary, dict) else None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise DataError(
            f"{path}: not the file {SUMMARY} was written for ({len(records)} records, {expected.get('utterances')} "
            "expected, sha256 differs): truncated or changed after the eval. Run the eval again"
        )
    arrays = [np.array([r[k] for r in records], dtype=np.int64) for k in _COUNT_KEYS]
    return records, UtteranceCounts(*arrays)


def _record_problem(record) -> str | None:
    """What is wrong with one predictions record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in _TEXT_KEYS:
        if not isinstance(record.get(key), str):
            return f"`{key}` missing or not a string"
    for key in _COUNT_KEYS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"`{key}` missing or not a count (got {value!r})"
    return None


def summarise(counts: UtteranceCounts, domains: list[str], resamples: int = 1000, seed: int = 0) -> dict:
    """WER/CER with bootstrap intervals per domain, overall micro (pooled words) and macro (mean of domains)."""
    names = sorted(set(domains))
    d = np.asarray(domains)
    out: dict = {"domains": {name: {"utterances": int((d == name).sum())} for name in names}, "resamples": resamples,
                 "seed": seed}
    overall = {"utterances": len(domains), "ref_words": int(counts.ref_words.sum()),
               "ref_chars": int(counts.ref_chars.sum())}
    masks = [d == name for name in names]
    for metric, errors, refs in (("wer", counts.word_errors, counts.ref_words),
                                 ("cer", counts.char_errors, counts.ref_chars)):
        # Each domain resampled within itself from its own independent stream; its interval and the macro
        # interval (the mean of the domains' rates, as the seeds report) come from the same resamples.
        per_domain, macro_ci = macro_bootstrap(errors, refs, masks, resamples, seed)
        for name, rows, rates in zip(names, masks, per_domain):
            out["domains"][name][metric] = rate(errors[rows], refs[rows])
            out["domains"][name][f"{metric}_ci95"] = list(percentile_ci(rates))
        overall[metric] = rate(errors, refs)  # micro: pooled over every word of every domain
        overall[f"{metric}_ci95"] = list(bootstrap_ci(errors, refs, resamples, seed))
        overall[f"{metric}_macro"] = float(np.mean([out["domains"][n][metric] for n in names]))
        overall[f"{metric}_macro_ci95"] = list(macro_ci)
    for name, rows in zip(names, masks):
        entry = out["domains"][name]
        entry["ref_words"], entry["ref_chars"] = int(counts.ref_words[rows].sum()), int(counts.ref_chars[rows].sum())
    out["overall"] = overall
    return out


def render_table(summary: dict) -> str:
    lines = [f"{'domain':<16} {'utts':>6} {'WER':>7} {'95% CI':>17} {'CER':>7} {'95% CI':>17}"]

    def row(name, e, wer_key="wer", cer_key="cer"):
        w_lo, w_hi = e[f"{wer_key}_ci95"]
        c_lo, c_hi = e[f"{cer_key}_ci95"]
        return (f"{name:<16} {e['utterances']:>6} {e[wer_key]:>7.3f} {f'{w_lo:.3f}–{w_hi:.3f}':>17} "
                f"{e[cer_key]:>7.3f} {f'{c_lo:.3f}–{c_hi:.3f}':>17}")

    for name, e in summary["domains"].items():
        lines.append(row(name, e))
    o = summary["overall"]
    lines.append(row("overall (micro)", o))
    lines.append(row("overall (macro)", o, "wer_macro", "cer_macro"))
    return "\n".join(lines)
