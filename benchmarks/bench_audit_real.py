"""Phase 0 audit on real speech: the 17 SASpeech studio recordings in ../shared/real-hebrew (read in place, never
copied into the repo), alone and next to corrupted copies of some of them, with the default scorers (`--all`).

Corruptions (each of a different clean clip): silence (the audio replaced by near-silence), a swapped
transcript (another clip's text), truncated audio (the first half kept), English text. Prints which clips are
flagged and why.

    python benchmarks/bench_audit_real.py                       # defaults; a temp folder is used and removed
    python benchmarks/bench_audit_real.py --out runs/bench-real  # keep the imported manifest and reports
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from lhotse import CutSet

from caspi.audit.run import audit
from caspi.config import AuditConfig
from caspi.data.audio import decode_audio, write_flac
from caspi.data.cuts import cut_text, make_cut, read_manifest
from caspi.data.ingest import import_source

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-hebrew" / "saspeech" / "manifest.jsonl"
CORRUPTIONS = ("silence", "swapped_transcript", "truncated_audio", "english_text")
ENGLISH = "The weather is nice today and we are going to the beach."


def corrupted_set(clean_manifest: Path, out: Path, per_kind: int = 2) -> tuple[Path, dict[str, str]]:
    """The clean cuts plus `per_kind` corrupted copies per kind (of different clean clips); returns the manifest
    and {corrupted id: kind}."""
    cuts = sorted(read_manifest(clean_manifest), key=lambda c: c.id)
    audio_dir = out / "corrupt-audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    extra, kinds = [], {}
    for j, kind in enumerate(k for k in CORRUPTIONS for _ in range(per_kind)):
        cut = cuts[j % len(cuts)]
        audio, _ = decode_audio(cut.recording.sources[0].source)
        text = cut_text(cut)
        if kind == "silence":
            audio = (1e-4 * rng.standard_normal(audio.size)).astype(np.float32)
        elif kind == "truncated_audio":
            audio = audio[: audio.size // 2]
        elif kind == "swapped_transcript":
            text = cut_text(cuts[(j + len(cuts) // 2) % len(cuts)])
        else:
            text = ENGLISH
        cid = f"corrupt-{kind}-{j}"
        path = audio_dir / f"{cid}.flac"
        write_flac(path, audio)
        extra.append(make_cut(cid, path, audio.size, text, domain="studio"))
        kinds[cid] = kind
    manifest = out / "with-corrupted.jsonl.gz"
    CutSet.from_cuts(cuts + extra).to_file(manifest)
    return manifest, kinds


def run(out: Path, config: AuditConfig | None = None) -> dict:
    config = config or AuditConfig(workers=1)
    imported = import_source(REAL, out / "clean.jsonl.gz", workers=1, progress=False)
    clean = audit(imported.manifest, out / "audit-clean", config, all_samples=True, progress=False)
    mixed_manifest, kinds = corrupted_set(imported.manifest, out)
    mixed = audit(mixed_manifest, out / "audit-mixed", config, all_samples=True, progress=False)
    return {"imported": imported.kept, "clean": clean.report, "mixed": mixed.report, "kinds": kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder to keep (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.out) if args.out else Path(tmp))
        clean, mixed, kinds = result["clean"], result["mixed"], result["kinds"]
        print(f"imported {result['imported']} real clips")
        which = ", ".join(f"{f['id']}: {f['reasons']}" for f in clean["flagged"]) or "none"
        print(f"clean only: {clean['low_quality_samples']} of {clean['total_samples']} flagged ({which}); "
              f"decision {clean['decision']} at {clean['low_quality_percentage']:.1f} %")
        flagged = {f["id"]: f["reasons"] for f in mixed["flagged"]}
        clean_flagged = {i: r for i, r in flagged.items() if i not in kinds}
        print(f"with {len(kinds)} corrupted copies: {mixed['low_quality_samples']} of {mixed['total_samples']} "
              f"flagged; clean clips flagged: {clean_flagged or 'none'}")
        for cid, kind in kinds.items():
            print(f"  {kind:<20} {cid:<32} {flagged.get(cid, 'NOT FLAGGED')}")


if __name__ == "__main__":
    main()
