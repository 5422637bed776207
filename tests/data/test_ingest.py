"""Tests for caspi.data.ingest (`import_source`): every source type and its importer, resampling, every rejection
reason, strict mode, schema errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from caspi.data.cuts import cut_domain, cut_text, make_cut, read_manifest, write_manifest
from caspi.data.ingest import import_source
from caspi.errors import ConfigError, DataError

SR = 16_000


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)  # (T,)
    return mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)  # (T, C)


def write_audio(path: Path, seconds: float = 1.0, sr: int = SR, channels: int = 1, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, channels), sr, **kw)
    return path


def wav_bytes(seconds: float, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr), sr, format="WAV")
    return buf.getvalue()


def write_nemo(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_rejected(out: Path) -> list[dict]:
    lines = (out.parent / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def hf_dataset(n: int = 3, sr: int = 22_050, **extra_columns):
    """A tiny `datasets.Dataset` with an audio struct column (bytes) cast to `Audio(decode=False)`."""
    from datasets import Audio, Dataset

    data = {
        "audio": [{"bytes": wav_bytes(0.5 + i * 0.25, sr), "path": f"clip{i}.wav"} for i in range(n)],
        "sentence": [f"משפט מספר {i}" for i in range(n)],
        **extra_columns,
    }
    return Dataset.from_dict(data).cast_column("audio", Audio(decode=False))


# ---------------------------------------------------------------------------------------------------- sources


def test_parquet_file_bytes_are_decoded_resampled_and_written(tmp_path):
    ds = hf_dataset(3, sr=22_050, domain=["kan", "kan", "radio"])
    ds.to_parquet(str(tmp_path / "clips.parquet"))
    out = tmp_path / "out" / "manifest.jsonl.gz"

    result = import_source(tmp_path / "clips.parquet", out, progress=False, workers=2)

    cuts = read_manifest(out)
    assert result.source_kind == "parquet" and result.kept == 3 and result.written == 3 and result.rejected == {}
    assert [c.id for c in cuts] == ["clips-train-0000000", "clips-train-0000001", "clips-train-0000002"]
    assert [cut_text(c) for c in cuts] == ["משפט מספר 0", "משפט מספר 1", "משפט מספר 2"]
    assert [cut_domain(c) for c in cuts] == ["kan", "kan", "radio"]  # from the domain column
    for i, cut in enumerate(cuts):
        info = sf.info(cut.recording.sources[0].source)
        assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
        assert cut.duration == pytest.approx(0.5 + i * 0.25, abs=1e-3)
    assert result.hours == pytest.approx(sum(0.5 + i * 0.25 for i in range(3)) / 3600, rel=1e-3)


def test_parquet_folder_picks_one_split_by_file_name(tmp_path):
    src = tmp_path / "ds" / "data"
    hf_dataset(2).to_parquet(str(src / "train-00000-of-00001.parquet"))
    hf_dataset(1).to_parquet(str(src / "test-00000-of-00001.parquet"))
    out = tmp_path / "out" / "m.jsonl.gz"

    assert import_source(tmp_path / "ds", out, progress=False, workers=1).kept == 2  # default train, no test leak
    result = import_source(tmp_path / "ds", out, split="test", domain="eval", progress=False, workers=1)
    assert result.kept == 1
    assert [cut_domain(c) for c in read_manifest(out)] == ["eval"]
    with pytest.raises(DataError, match="validation"):
        import_source(tmp_path / "ds", out, split="validation", progress=False)


def test_save_to_disk_dataset_dict_with_id_column(tmp_path):
    from datasets import DatasetDict

    ds = DatasetDict(
        train=hf_dataset(2, id=["utt-a", "utt-b"], transcript=["א", "ב"]),
        test=hf_dataset(1, id=["utt-c"], transcript=["ג"]),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out" / "m.jsonl.gz"

    result = import_source(tmp_path / "saved", out, split="test", text_field="transcript", progress=False)

    cuts = read_manifest(out)
    assert result.source_kind == "hf_disk"
    assert [c.id for c in cuts] == ["utt-c"]
    assert cut_text(cuts[0]) == "ג"
    assert cut_domain(cuts[0]) == "saved"  # the dataset's (folder) name when nothing else says
    with pytest.raises(DataError, match=r"no split 'dev'.*test.*train"):
        import_source(tmp_path / "saved", out, split="dev", progress=False)


def test_hub_dataset_unreachable_is_a_data_error_naming_it(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"ivrit-ai/eval-whatsapp.*split 'test'.*ConnectionError"):
        import_source("ivrit-ai/eval-whatsapp", tmp_path / "m.jsonl.gz", split="test", progress=False)


def test_hub_dataset_is_loaded_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load(dataset_id, config, split):
        calls.append((dataset_id, config, split))
        return hf_dataset(2)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    result = import_source("upai-inc/saspeech", tmp_path / "m.jsonl.gz", progress=False, workers=1)

    assert calls == [("upai-inc/saspeech", None, "train")]
    assert result.source_kind == "hf_hub" and result.kept == 2
    assert {cut_domain(c) for c in read_manifest(tmp_path / "m.jsonl.gz")} == {"saspeech"}
    # A dataset configuration rides on the id: org/name:config (google/fleurs needs he_il).
    import_source("google/fleurs:he_il", tmp_path / "f.jsonl.gz", split="test", progress=False, workers=1)
    assert calls[-1] == ("google/fleurs", "he_il", "test")
    assert {cut_domain(c) for c in read_manifest(tmp_path / "f.jsonl.gz")} == {"fleurs-he_il"}


def test_nemo_relative_paths_given_and_derived_ids_in_place_and_duration_warning(tmp_path):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "wavs" / "a b.wav", 1.0)  # 16 kHz mono WAV: referenced in place
    write_audio(corpus / "wavs" / "c.flac", 2.0, sr=8_000)  # 8 kHz: resampled and written
    write_audio(corpus / "wavs" / "d.wav", 0.5, sr=22_050)
    manifest = write_nemo(
        corpus / "manifest.jsonl",
        [
            {"audio_filepath": "wavs/a b.wav", "text": "  שלום  ", "duration": 1.0, "id": "given-id"},
            {"audio_filepath": "wavs/c.flac", "text": "עולם", "duration": 2.5, "domain": "phone"},
            {"audio_filepath": str(corpus / "wavs" / "d.wav"), "text": "ד", "id": "../spk/utt 1"},
        ],
    )
    out = tmp_path / "out" / "manifest.jsonl.gz"

    result = import_source(manifest, out, progress=False, workers=2)

    a, c, d = read_manifest(out)
    assert (a.id, c.id, d.id) == ("given-id", "wavs-c", "../spk/utt 1")
    # An id that is no safe file name still gets its own file inside audio/ (hash suffix: no collisions).
    assert Path(d.recording.sources[0].source).parent == (tmp_path / "out" / "audio").resolve()
    assert Path(d.recording.sources[0].source).name.startswith("_spk_utt_1-")
    assert cut_text(a) == "שלום"  # stripped, otherwise as given
    assert (cut_domain(a), cut_domain(c)) == ("corpus", "phone")
    assert Path(a.recording.sources[0].source) == (corpus / "wavs" / "a b.wav").resolve()
    assert Path(c.recording.sources[0].source).parent == (tmp_path / "out" / "audio").resolve()
    assert c.duration == pytest.approx(2.0, abs=1e-3)  # decoded, not the declared 2.5
    assert (result.in_place, result.written) == (1, 2)
    assert len(result.warnings) == 1 and "wavs-c: declared 2.50 s, decoded 2.00 s" in result.warnings[0]
    assert a.load_audio().shape == (1, SR)


def test_folder_with_txt_transcripts_recursive(tmp_path):
    src = tmp_path / "recordings"
    write_audio(src / "spk1" / "take one.wav", 1.0)
    (src / "spk1" / "take one.txt").write_text("\ufeffבוקר טוב\n", encoding="utf-8")
    write_audio(src / "spk2" / "x.flac", 0.5, sr=48_000)
    (src / "spk2" / "x.txt").write_text("ערב טוב", encoding="utf-8")
    write_audio(src / "orphan.wav", 0.5)  # no transcript
    out = src / "manifest.jsonl.gz"  # output inside the source: its audio/ must not be re-imported next time

    result = import_source(src, out, progress=False, workers=1)

    cuts = read_manifest(out)
    assert result.source_kind == "folder"
    assert [c.id for c in cuts] == ["spk1-take_one", "spk2-x"]
    assert [cut_text(c) for c in cuts] == ["בוקר טוב", "ערב טוב"]
    assert {cut_domain(c) for c in cuts} == {"recordings"}
    assert read_rejected(out) == [
        {
            "id": "orphan",
            "source": str(src / "orphan.wav"),
            "reason": "missing_transcript",
            "message": "no transcript file orphan.txt beside the audio",
        }
    ]
    again = import_source(src, out, progress=False, workers=1)
    assert (again.kept, again.rejected) == (2, {"missing_transcript": 1})


def test_lhotse_manifest_is_validated_and_rewritten_keeping_custom_fields(tmp_path):
    good = write_audio(tmp_path / "audio" / "g.flac", 1.0, format="FLAC")
    bad = tmp_path / "audio" / "bad.flac"
    bad.write_bytes(b"not audio at all")
    long = write_audio(tmp_path / "audio" / "long.flac", 2.0, format="FLAC")
    cuts = [
        make_cut("g", good, SR, "טקסט", "studio", custom={"planted_error": "none"}),
        make_cut("bad", bad, SR, "טקסט", "studio"),
        # Part of a file: not a whole-file cut, so Lhotse loads its samples and they are written as a new file.
        make_cut("part", long, 2 * SR, "חלק", "radio").truncate(offset=0.5, duration=1.0).with_id("part"),
    ]
    from lhotse import CutSet

    src = write_manifest(CutSet.from_cuts(cuts), tmp_path / "train.jsonl.gz")
    out = tmp_path / "imported" / "train.jsonl.gz"

    result = import_source(src, out, progress=False, workers=1)

    cut, part = read_manifest(out)
    assert result.source_kind == "lhotse" and result.in_place == 1 and result.written == 1
    assert cut.id == "g" and cut.custom == {"domain": "studio", "planted_error": "none"}
    assert Path(cut.recording.sources[0].source) == good.resolve()
    assert (part.id, part.start, part.duration, cut_domain(part)) == ("part", 0, 1.0, "radio")
    assert np.allclose(part.load_audio()[0], sf.read(long, dtype="float32")[0][SR // 2 : SR + SR // 2], atol=1e-3)
    assert [(r["id"], r["reason"]) for r in read_rejected(out)] == [("bad", "unreadable")]


def test_unknown_source_is_a_config_error(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="unsupported file type"):
        import_source(tmp_path / "notes.csv", tmp_path / "m.jsonl.gz", progress=False)
    with pytest.raises(ConfigError, match="not an existing file"):
        import_source(tmp_path / "missing" / "dir" / "x", tmp_path / "m.jsonl.gz", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no audio files"):
        import_source(tmp_path / "empty", tmp_path / "m.jsonl.gz", progress=False)


# ---------------------------------------------------------------------------------------------------- audio


def test_44k_stereo_is_averaged_and_resampled_to_16k_mono_flac(tmp_path):
    stereo = write_audio(tmp_path / "src" / "st.wav", 1.5, sr=44_100, channels=2)
    manifest = write_nemo(tmp_path / "src" / "m.jsonl", [{"audio_filepath": "st.wav", "text": "סטריאו"}])
    out = tmp_path / "out" / "m.jsonl.gz"

    import_source(manifest, out, progress=False, workers=1)

    (cut,) = read_manifest(out)
    written = Path(cut.recording.sources[0].source)
    assert written == (tmp_path / "out" / "audio" / "st.flac").resolve()
    samples, sr = sf.read(written, dtype="float32")
    assert (sr, samples.ndim, len(samples)) == (SR, 1, 24_000)
    assert cut.num_samples == 24_000
    # The mono mix of (x, 0.5x) is 0.75x: a 0.3-amplitude tone → peak ~0.225 (16-bit FLAC, soxr filtering).
    assert np.abs(samples).max() == pytest.approx(0.225, abs=5e-3)
    assert np.array_equal(sf.read(stereo)[0].shape, (66_150, 2))  # the source was not touched


# ---------------------------------------------------------------------------------------------------- rejections


@pytest.fixture
def messy_corpus(tmp_path) -> Path:
    """Two good clips and one of each rejection reason, as a NeMo manifest."""
    d = tmp_path / "messy"
    write_audio(d / "good1.wav", 1.0)
    write_audio(d / "good2.flac", 1.0, sr=22_050)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(d / "zero.wav", np.zeros((0,), dtype=np.float32), SR)
    sf.write(d / "nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    write_audio(d / "long.wav", 3.0)
    write_audio(d / "blank.wav", 1.0)
    return write_nemo(
        d / "manifest.jsonl",
        [
            {"audio_filepath": "good1.wav", "text": "טוב"},
            {"audio_filepath": "corrupt.wav", "text": "פגום"},
            {"audio_filepath": "zero.wav", "text": "ריק"},
            {"audio_filepath": "nan.wav", "text": "לא מספר"},
            {"audio_filepath": "blank.wav", "text": "   "},
            {"audio_filepath": "good1.wav", "text": "שוב", "id": "good1"},
            {"audio_filepath": "long.wav", "text": "ארוך"},
            {"text": "אין קובץ"},
            {"audio_filepath": "good2.flac", "text": "טוב גם"},
        ],
    )


def test_each_rejection_reason_is_recorded_and_good_samples_kept(messy_corpus, tmp_path):
    out = tmp_path / "out" / "manifest.jsonl.gz"

    result = import_source(messy_corpus, out, max_duration=2.0, progress=False, workers=2)

    assert [c.id for c in read_manifest(out)] == ["good1", "good2"]
    rejected = read_rejected(out)
    by_reason = {r["reason"]: r for r in rejected}
    assert [(r["id"], r["reason"]) for r in rejected] == [
        ("corrupt", "unreadable"),
        ("zero", "empty"),
        ("nan", "non_finite"),
        ("blank", "empty_transcript"),
        ("good1", "duplicate_id"),
        ("long", "too_long"),
        (None, "missing_field"),
    ]
    assert by_reason["duplicate_id"]["source"] == f"{messy_corpus}:6"
    assert by_reason["missing_field"]["source"] == f"{messy_corpus}:8"
    assert "audio_filepath" in by_reason["missing_field"]["message"]
    assert "corrupt.wav" in by_reason["unreadable"]["message"]
    assert "3.00 s > max_duration 2.0 s" in by_reason["too_long"]["message"]
    assert result.kept == 2
    assert result.rejected == {r: 1 for r in by_reason}
    assert not (tmp_path / "out" / "audio" / "long.flac").exists()  # a rejected clip leaves no file behind


def test_strict_mode_raises_on_the_first_bad_sample_naming_it(messy_corpus, tmp_path):
    with pytest.raises(DataError, match=r"manifest.jsonl:2: sample 'corrupt' rejected \(unreadable\)"):
        import_source(messy_corpus, tmp_path / "out" / "m.jsonl.gz", strict=True, progress=False, workers=2)
    assert not (tmp_path / "out" / "m.jsonl.gz").exists()


def test_min_duration_and_everything_rejected(tmp_path):
    write_audio(tmp_path / "src" / "a.wav", 0.2)
    (tmp_path / "src" / "a.txt").write_text("קצר", encoding="utf-8")
    out = tmp_path / "out" / "m.jsonl.gz"
    with pytest.raises(DataError, match=r"no sample survived import \(too_short 1\)"):
        import_source(tmp_path / "src", out, min_duration=0.5, progress=False, workers=1)
    assert read_rejected(out)[0]["reason"] == "too_short"
    assert not out.exists()


def test_missing_column_names_it_and_the_available_ones(tmp_path):
    from datasets import Audio, Dataset

    ds = Dataset.from_dict({"audio": [{"bytes": wav_bytes(0.5, SR), "path": "a.wav"}], "label": ["x"]})
    ds.cast_column("audio", Audio(decode=False)).to_parquet(str(tmp_path / "d.parquet"))
    out = tmp_path / "m.jsonl.gz"
    with pytest.raises(DataError, match=r"no transcript column.*sentence.*columns available: \['audio', 'label'\]"):
        import_source(tmp_path / "d.parquet", out, progress=False)
    with pytest.raises(DataError, match=r"no text column 'words'; columns available: \['audio', 'label'\]"):
        import_source(tmp_path / "d.parquet", out, text_field="words", progress=False)
    with pytest.raises(DataError, match=r"no audio column 'speech'"):
        import_source(tmp_path / "d.parquet", out, text_field="label", audio_field="speech", progress=False)
    with pytest.raises(DataError, match=r"no id column 'utt'"):
        import_source(tmp_path / "d.parquet", out, text_field="label", id_field="utt", progress=False)


# ---------------------------------------------------------------------------------------------------- real data


def test_real_saspeech_nemo_manifest(tmp_path, real_hebrew_manifest):
    out = tmp_path / "saspeech" / "manifest.jsonl.gz"

    result = import_source(real_hebrew_manifest, out, progress=False, workers=2)

    cuts = read_manifest(out)
    declared = {
        json.loads(line)["audio_filepath"]: json.loads(line)["duration"]
        for line in real_hebrew_manifest.read_text(encoding="utf-8").splitlines()
    }
    assert (result.kept, result.rejected, result.written, result.warnings) == (17, {}, 17, [])
    assert "audio-Robo_Shaul_1_0017" in {c.id for c in cuts}  # spaces in names made safe
    durations = sorted(c.duration for c in cuts)
    assert durations == pytest.approx(sorted(declared.values()), abs=0.05)
    assert 1.9 < durations[0] and durations[-1] < 13.1
    assert all(cut_domain(c) == "studio" for c in cuts)
    assert any("\u05b0" <= ch <= "\u05c7" for c in cuts for ch in cut_text(c))  # niqqud kept: normalise later
    for cut in cuts:
        info = sf.info(cut.recording.sources[0].source)
        assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
