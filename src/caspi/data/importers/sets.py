"""The field's reference eval sets by name: where each lives on the Hugging Face hub, which split and columns hold
it, and how to open it, from the hub or from a local stand-in (an offline mirror, or the test fixtures).

    caspi import eval-d1 --out data/eval-d1.jsonl.gz                 # ivrit-ai/eval-d1, split test, column text
    caspi import kan --sets-root /data/mirror --out data/kan.jsonl.gz   # /data/mirror/kan/validation-*.parquet

Every fact in `EVAL_SETS` comes from ../shared/REFERENCE.md ("Hebrew ASR: ivrit.ai, the field's reference");
where it says nothing (audio columns, Common Voice's split and text column, licences other than ivrit.ai's) the
comment says so and the value is the `datasets` convention. A stand-in root holds one folder per set, named as the
set, with parquet files in hub layout (`ROOT/eval-d1/test-00000-of-00001.parquet`, or `ROOT/kan/validation/…`): for
a set the hub stores as parquet, `huggingface-cli download --repo-type dataset ivrit-ai/eval-d1 --local-dir
ROOT/eval-d1` makes one. When a root is given (`sets_root`, else `$CASPI_EVAL_SETS`) it replaces the hub for every
set; a set without a folder there is not available, rather than fetched.

Ids: a set's rows get ids `<set name>-<row, 6 digits>` whatever the source, so a hub import and a mirror's give the
same ids (hypotheses files and cached manifests match either way). A hub `id` column is not used: none of these
sets is known to have one that is unique per recording (FLEURS' `id`, for one, numbers sentences that several
speakers read). An explicit `id_field` still wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from caspi.data.importers.common import Job
from caspi.data.importers.hf import from_hub, from_parquet
from caspi.errors import ConfigError, DataError

SETS_ROOT_ENV = "CASPI_EVAL_SETS"  # a stand-in root used when no sets_root is given
IVRIT_LICENCE = ("ivrit.ai licence v2: CC-BY-4.0 limited to AI training and academic research "
                 "(REFERENCE.md; check the dataset card)")
NOT_STATED = "not stated in REFERENCE.md; read the dataset card before use"


@dataclass(frozen=True)
class EvalSet:
    """One reference eval set. `hub_id` is `org/name` or `org/name:config` (a dataset configuration)."""

    name: str
    hub_id: str
    split: str
    audio_field: str
    text_field: str
    id_field: str | None  # a column unique per row; None: ids are `<name>-<row>` (module docstring)
    domain: str  # the manifest's domain for every cut of the set
    gated: bool  # the hub asks users to accept terms (and log in) before download
    licence: str
    description: str

    @property
    def repo(self) -> str:
        return self.hub_id.partition(":")[0]

    def __str__(self) -> str:  # messages that name a source name the set
        return self.name


# The leaderboard's five sets (its table's columns, REFERENCE.md "Best published WER") and Common Voice 17.
# audio_field "audio" throughout: REFERENCE.md names no audio column; `audio` is the datasets default (an Audio
# feature column), which is what these hub datasets use.
EVAL_SETS: dict[str, EvalSet] = {s.name: s for s in (
    EvalSet("eval-d1", "ivrit-ai/eval-d1", "test", "audio", "text", None, "eval-d1", False, IVRIT_LICENCE,
            "17 long recordings: needs long-form decoding"),
    EvalSet("eval-whatsapp", "ivrit-ai/eval-whatsapp", "test", "audio", "text", None, "eval-whatsapp", False,
            IVRIT_LICENCE, "54 WhatsApp voice notes, 70.8 min, some minutes long"),
    EvalSet("saspeech", "upai-inc/saspeech", "test", "audio", "text", None, "saspeech", False, NOT_STATED,
            "studio read speech of one speaker"),
    EvalSet("fleurs-he", "google/fleurs:he_il", "test", "audio", "transcription", None, "fleurs-he", False,
            NOT_STATED, "FLEURS Hebrew (he_il): read Wikipedia sentences"),
    EvalSet("kan", "imvladikon/hebrew_speech_kan", "validation", "audio", "sentence", None, "kan", False,
            NOT_STATED, "Kan broadcast speech; the leaderboard scores its validation split"),
    # Split and text column not in REFERENCE.md: Common Voice's usual `test` split and `sentence` column.
    EvalSet("cv17-he", "mozilla-foundation/common_voice_17_0:he", "test", "audio", "sentence", None, "cv17-he",
            True, NOT_STATED + " (gated: accept Mozilla's terms on the hub)",
            "Common Voice 17 Hebrew: crowd-read sentences; gated on the hub"),
)}


class EvalSetUnavailable(DataError):
    """A known eval set that cannot be read here: no stand-in under the root, or the hub refused or is unreachable."""


def eval_set(name: str) -> EvalSet:
    """The registry entry of `name`; `ConfigError` listing the known names otherwise."""
    try:
        return EVAL_SETS[name]
    except KeyError:
        raise ConfigError(f"unknown eval set {name!r}; known sets: {', '.join(EVAL_SETS)}") from None


def resolve_sets_root(explicit: str | Path | None = None) -> Path | None:
    """The stand-in root: `explicit`, else `$CASPI_EVAL_SETS`, else None (the hub)."""
    value = explicit if explicit is not None else os.environ.get(SETS_ROOT_ENV) or None
    return Path(value) if value is not None else None


def stand_in_files(entry: EvalSet, root: Path) -> list[Path]:
    """The parquet files of `entry`'s stand-in under `root` (every split; the importer picks one), sorted;
    `EvalSetUnavailable` naming the folder expected when there are none."""
    folder = root / entry.name
    files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise EvalSetUnavailable(
            f"{entry.name}: no stand-in at {folder} (parquet files in hub layout, e.g. "
            f"{entry.split}-00000-of-00001.parquet); put a copy there, or drop --sets-root / ${SETS_ROOT_ENV} to "
            f"load {entry.hub_id} from the hub{_gated_hint(entry)}"
        )
    return files


def open_eval_set(name: str | EvalSet, *, sets_root: str | Path | None = None, split: str | None = None,
                  domain: str | None = None, text_field: str | None = None, audio_field: str | None = None,
                  id_field: str | None = None) -> tuple[str, int | None, Iterator[Job]]:
    """(kind, number of rows, jobs) of an eval set, as `caspi.data.importers` return them, from its stand-in under
    the root (`sets_root`, else `$CASPI_EVAL_SETS`) or else the hub. The registry fills split, columns and domain;
    arguments given override them. `EvalSetUnavailable` when the stand-in is missing or the hub load fails (a
    schema error in a stand-in stays a plain `DataError`: the files are there but wrong)."""
    entry = name if isinstance(name, EvalSet) else eval_set(name)
    fields = {"domain": domain or entry.domain, "text_field": text_field or entry.text_field,
              "audio_field": audio_field or entry.audio_field, "id_field": id_field or entry.id_field}
    split = split or entry.split
    root = resolve_sets_root(sets_root)
    if root is not None:
        files = stand_in_files(entry, root)
        kind, total, jobs = from_parquet(files, root / entry.name, entry.name, split=split, **fields)
    else:
        try:
            kind, total, jobs = from_hub(entry.hub_id, split=split, **fields)
        except DataError as exc:  # offline, gated, moved: the hub's content is not the user's to fix
            raise EvalSetUnavailable(
                f"{entry.name}: {exc}{_gated_hint(entry)}; or give a local copy with --sets-root DIR "
                f"(DIR/{entry.name}/*.parquet)"
            ) from None
    if fields["id_field"] is None:
        jobs = _row_ids(jobs, entry.name)
    return kind, total, jobs


def _row_ids(jobs: Iterator[Job], name: str) -> Iterator[Job]:
    for row, job in enumerate(jobs):
        job.id = f"{name}-{row:06d}"
        yield job


def _gated_hint(entry: EvalSet) -> str:
    if not entry.gated:
        return ""
    return (f" (gated: accept its terms at https://huggingface.co/datasets/{entry.repo} and log in with "
            "`hf auth login` or HF_TOKEN)")


def write_stand_in(root: str | Path, name: str, clips: list[tuple[bytes, str]], *, split: str | None = None) -> Path:
    """A stand-in of set `name` under `root`, in the schema the registry reads: `clips` (encoded audio, transcript)
    as one hub-named parquet file `root/<name>/<split>-00000-of-00001.parquet` (split: the set's own), the audio as
    a `datasets` Audio column. For tests and for a mirror made from local copies. Returns the file."""
    from datasets import Audio, Dataset

    entry = eval_set(name)
    split = split or entry.split
    data = {entry.audio_field: [{"bytes": audio, "path": f"{name}-{i:06d}.wav"} for i, (audio, _) in enumerate(clips)],
            entry.text_field: [text for _, text in clips]}
    path = Path(root) / name / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(data).cast_column(entry.audio_field, Audio()).to_parquet(str(path))
    return path
