"""Tests for caspi.data.importers.sets: the eval-set registry, `caspi import NAME` from local parquet stand-ins in the
hub's schema (no hub here), the hub path (load_dataset replaced), and the errors for unknown or missing sets."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from caspi.cli import main
from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.data.importers.sets import (EVAL_SETS, SETS_ROOT_ENV, EvalSetUnavailable, eval_set, open_eval_set,
                                       write_stand_in)
from caspi.data.ingest import import_source
from caspi.errors import ConfigError, DataError

SENTENCES = ["שלום עולם יפה", "חיילי צה״ל הגיעו הבוקר.", "מחר נלך לים", "אני אוהב לקרוא ספרים"]


@pytest.fixture(scope="module")
def clips(espeak) -> list[tuple[bytes, str]]:
    """Four short Hebrew clips from espeak-ng as 16 kHz WAV bytes, with their transcripts."""
    from caspi.data.synth import speak

    out = []
    for text in SENTENCES:
        buf = io.BytesIO()
        sf.write(buf, speak(text), SAMPLE_RATE, format="WAV")
        out.append((buf.getvalue(), text))
    return out


def test_registry_holds_the_reference_sets_as_reference_md_names_them():
    assert list(EVAL_SETS) == ["eval-d1", "eval-whatsapp", "saspeech", "fleurs-he", "kan", "cv17-he"]
    facts = {name: (s.hub_id, s.split, s.text_field, s.gated) for name, s in EVAL_SETS.items()}
    assert facts == {
        "eval-d1": ("ivrit-ai/eval-d1", "test", "text", False),
        "eval-whatsapp": ("ivrit-ai/eval-whatsapp", "test", "text", False),
        "saspeech": ("upai-inc/saspeech", "test", "text", False),
        "fleurs-he": ("google/fleurs:he_il", "test", "transcription", False),
        "kan": ("imvladikon/hebrew_speech_kan", "validation", "sentence", False),
        "cv17-he": ("mozilla-foundation/common_voice_17_0:he", "test", "sentence", True),
    }
    assert all(s.audio_field == "audio" and s.domain == s.name and s.licence and s.description
               for s in EVAL_SETS.values())
    assert "long-form" in EVAL_SETS["eval-d1"].description
    assert "CC-BY-4.0" in EVAL_SETS["eval-whatsapp"].licence
    assert EVAL_SETS["fleurs-he"].repo == "google/fleurs"


def test_import_by_name_reads_the_stand_in_split_and_columns(clips, tmp_path, capsys):
    root = tmp_path / "mirror"
    write_stand_in(root, "kan", clips[:3])  # validation: the split the registry names
    write_stand_in(root, "kan", clips[3:], split="train")  # must not leak into the eval set
    out = tmp_path / "kan" / "m.jsonl.gz"

    assert main(["import", "kan", "--sets-root", str(root), "--out", str(out), "--quiet", "--workers", "1"]) == 0

    assert "imported 3 samples" in capsys.readouterr().out
    cuts = sorted(read_manifest(out), key=lambda c: c.id)
    assert [c.id for c in cuts] == ["kan-000000", "kan-000001", "kan-000002"]
    assert [cut_text(c) for c in cuts] == [text for _, text in clips[:3]]  # the `sentence` column
    assert {cut_domain(c) for c in cuts} == {"kan"}
    assert all(c.duration > 0.5 for c in cuts)


def test_fleurs_transcription_column_env_root_and_flags_that_override(clips, tmp_path, monkeypatch):
    root = tmp_path / "mirror"
    write_stand_in(root, "fleurs-he", clips)
    assert pq.read_schema(root / "fleurs-he" / "test-00000-of-00001.parquet").names == ["audio", "transcription"]
    monkeypatch.setenv(SETS_ROOT_ENV, str(root))  # the root from the environment, no flag

    result = import_source("fleurs-he", tmp_path / "a" / "m.jsonl.gz", progress=False, workers=1)
    assert result.kept == 4 and result.source_kind == "parquet"
    assert {cut_domain(c) for c in read_manifest(tmp_path / "a" / "m.jsonl.gz")} == {"fleurs-he"}

    result = import_source("fleurs-he", tmp_path / "b" / "m.jsonl.gz", domain="read", progress=False, workers=1)
    assert {cut_domain(c) for c in read_manifest(tmp_path / "b" / "m.jsonl.gz")} == {"read"}  # a flag wins
    with pytest.raises(DataError, match=r"no text column 'text'.*transcription"):
        import_source("fleurs-he", tmp_path / "c" / "m.jsonl.gz", text_field="text", progress=False)


def test_an_unknown_name_lists_the_known_sets(tmp_path, capsys):
    assert main(["import", "eval-d2", "--out", str(tmp_path / "m.jsonl.gz")]) == 2
    err = capsys.readouterr().err
    assert "eval-d2" in err and "eval-d1, eval-whatsapp, saspeech, fleurs-he, kan, cv17-he" in err
    with pytest.raises(ConfigError, match="unknown eval set 'kan2'; known sets: eval-d1, eval-whatsapp"):
        eval_set("kan2")
    with pytest.raises(ConfigError, match="--sets-root applies to an eval set name"):
        import_source("eval-d2", tmp_path / "m.jsonl.gz", sets_root=tmp_path, progress=False)


def test_a_missing_stand_in_names_the_folder_expected_and_the_gate(tmp_path, capsys):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(EvalSetUnavailable, match=r"cv17-he: no stand-in at .*mirror/cv17-he .*test-00000-of-00001"
                                                 r"\.parquet.*gated: accept its terms"):
        open_eval_set("cv17-he", sets_root=tmp_path / "mirror")
    assert main(["import", "eval-d1", "--sets-root", str(tmp_path / "mirror"), "--out",
                 str(tmp_path / "m.jsonl.gz")]) == 1  # a DataError
    assert "eval-d1: no stand-in at" in capsys.readouterr().err


def test_without_a_root_a_set_comes_from_the_hub_with_its_config_and_split(clips, tmp_path, monkeypatch):
    import datasets
    from datasets import Audio, Dataset

    monkeypatch.delenv(SETS_ROOT_ENV, raising=False)
    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return Dataset.from_dict({"audio": [{"bytes": a, "path": None} for a, _ in clips[:2]],
                                  "transcription": [t for _, t in clips[:2]],
                                  "id": [7, 7]}).cast_column("audio", Audio(decode=False))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    result = import_source("fleurs-he", tmp_path / "m.jsonl.gz", progress=False, workers=1)
    assert calls == [("google/fleurs", "he_il", "test")]
    # Two rows sharing a hub `id` (FLEURS numbers sentences, not recordings) are both kept, under row ids.
    assert result.kept == 2 and [c.id for c in read_manifest(tmp_path / "m.jsonl.gz")] == ["fleurs-he-000000",
                                                                                           "fleurs-he-000001"]

    def gated(*args, **kwargs):
        raise ConnectionError("Dataset 'mozilla-foundation/common_voice_17_0' is a gated dataset on the Hub.")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(EvalSetUnavailable, match=r"cv17-he: .*gated dataset.*accept its terms at https://huggingface"
                                                 r"\.co/datasets/mozilla-foundation/common_voice_17_0.*--sets-root"):
        import_source("cv17-he", tmp_path / "cv.jsonl.gz", progress=False)
