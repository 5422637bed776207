"""Experiment tracking: metrics.jsonl format and resume, TensorBoard scalars and purge, W&B offline, no secrets."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caspi.errors import CheckpointError, DependencyError
from caspi.train.track import Tracker, redact

MARKER = "caspi-secret-marker-7f3a9c"  # planted in the environment and config; must never reach a file


def records(steps=range(1, 7)) -> list[dict]:
    """A deterministic stream like the loop's: a train record every step, an eval and an event every 3rd."""
    out = []
    for s in steps:
        out.append({"kind": "train", "step": s, "epoch": 1 + s // 4, "phase": "B", "loss": 2.0 / s + 0.1,
                    "lr/projector": 1e-4 * s, "grad_norm": 0.9, "samples_per_s": 40.1, "mem_gib": 1.2})
        if s % 3 == 0:
            out.append({"kind": "eval", "step": s, "wer": 0.5 / s, "cer": 0.2, "wer/studio": 1 / 3})
            out.append({"kind": "event", "step": s, "event": "phase_switch", "message": f"שלב {s}: decoder"})
    return out


def read_lines(path: Path) -> list[dict]:
    def reject(constant):  # json.loads accepts NaN/Infinity by default; a valid JSON line must not contain them
        raise ValueError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text(encoding="utf-8").splitlines()]


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------- metrics.jsonl


def test_metrics_lines_round_trip_exactly(tmp_path):
    recs = records() + [{"kind": "train", "step": 7, "loss": 0.1 + 0.2, "tiny": 5e-324, "big": 1.7976931348623157e308}]
    with Tracker(tmp_path, tensorboard=False) as tr:
        for r in recs:
            tr.log(r)
    text = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8")
    assert read_lines(tmp_path / "metrics.jsonl") == recs  # floats compare exactly; key order kept below
    assert [list(d) for d in read_lines(tmp_path / "metrics.jsonl")] == [list(r) for r in recs]
    assert "שלב 3" in text  # ensure_ascii=False: Hebrew stays readable in the file
    assert text.endswith("\n") and text.count("\n") == len(recs)


def test_offset_is_file_size(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tr:
        assert tr.offset() == 0
        tr.log(records()[0])
        assert tr.offset() == (tmp_path / "metrics.jsonl").stat().st_size > 0


def test_numpy_and_torch_scalars_become_plain_numbers(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log({"kind": "train", "step": np.int64(3), "loss": np.float32(0.5), "gn": torch.tensor(2.0), "ok": True})
        with pytest.raises(TypeError, match="cannot log"):
            tr.log({"kind": "train", "step": 4, "loss": object()})
    assert read_lines(tmp_path / "metrics.jsonl") == [{"kind": "train", "step": 3, "loss": 0.5, "gn": 2.0, "ok": True}]


@pytest.mark.parametrize("bad", [{"step": 1, "loss": 1.0}, {"kind": "train", "loss": 1.0},
                                 {"kind": "train", "step": 1.0}, {"kind": "train", "step": True}])
def test_record_needs_kind_and_int_step(tmp_path, bad):
    with Tracker(tmp_path, tensorboard=False) as tr, pytest.raises(ValueError, match="'kind'"):
        tr.log(bad)


def test_non_finite_floats_are_valid_json_strings(tmp_path):
    with Tracker(tmp_path) as tr:
        tr.log({"kind": "train", "step": 1, "loss": math.nan, "grad_norm": math.inf, "x": -math.inf,
                "f32": np.float32("nan"), "ok": 1.5})
    (line,) = read_lines(tmp_path / "metrics.jsonl")  # read_lines rejects bare NaN/Infinity
    assert line == {"kind": "train", "step": 1, "loss": "nan", "grad_norm": "inf", "x": "-inf", "f32": "nan", "ok": 1.5}
    assert math.isnan(float(line["loss"])) and float(line["x"]) == -math.inf  # readers get the value back
    assert set(tb_scalars(tmp_path)) == {"train/ok"}  # non-finite values are not TensorBoard scalars


# ---------------------------------------------------------------------------------------------- resume


def test_truncate_resume_is_byte_identical_to_uninterrupted_run(tmp_path):
    recs = records(range(1, 10))
    ckpt_at = 7  # records[:7] were logged when the checkpoint was taken

    with Tracker(tmp_path / "straight", tensorboard=False) as tr:
        for r in recs:
            tr.log(r)

    run = tmp_path / "resumed"
    tr = Tracker(run, tensorboard=False)
    for r in recs[:ckpt_at]:
        tr.log(r)
    offset = tr.offset()
    for r in recs[ckpt_at:ckpt_at + 3]:  # logged after the checkpoint, then the job is preempted (no close)
        tr.log({**r, "loss": 99.0} if "loss" in r else r)
    del tr
    assert (run / "metrics.jsonl").stat().st_size > offset

    with Tracker(run, tensorboard=False, resume_offset=offset) as tr:
        for r in recs[ckpt_at:]:
            tr.log(r)
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()


def test_resume_offset_beyond_file_raises(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log(records()[0])
        size = tr.offset()
    with pytest.raises(CheckpointError) as err:
        Tracker(tmp_path, tensorboard=False, resume_offset=size + 10)
    message = str(err.value)
    assert "metrics.jsonl" in message and str(size) in message and str(size + 10) in message
    assert (tmp_path / "metrics.jsonl").stat().st_size == size  # left untouched

    with pytest.raises(CheckpointError, match="metrics.jsonl"):  # no file at all, but the checkpoint expects one
        Tracker(tmp_path / "elsewhere", tensorboard=False, resume_offset=5)


def test_resume_offset_mid_line_raises(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log(records()[0])
        size = tr.offset()
    with pytest.raises(CheckpointError, match="not at the end of a line"):
        Tracker(tmp_path, tensorboard=False, resume_offset=size - 3)


def test_resume_none_appends_and_zero_starts_over(tmp_path):
    recs = records(range(1, 4))
    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log(recs[0])
    with Tracker(tmp_path, tensorboard=False) as tr:  # resume_offset=None: append
        tr.log(recs[1])
    assert read_lines(tmp_path / "metrics.jsonl") == recs[:2]
    with Tracker(tmp_path, tensorboard=False, resume_offset=0) as tr:  # 0: start the file over
        tr.log(recs[2])
    assert read_lines(tmp_path / "metrics.jsonl") == [recs[2]]


def test_append_after_torn_line_starts_a_new_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"kind": "train", "step": 1}\n{"kind": "tr')  # killed mid-write
    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log({"kind": "train", "step": 2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"kind": "train", "step": 2}


# ---------------------------------------------------------------------------------------------- disabled / deps


def test_disabled_tracker_creates_nothing(tmp_path):
    run = tmp_path / "rank1"
    tr = Tracker(run, enabled=False, tensorboard=True, wandb=True, resume_offset=123, resume_step=5, wandb_id="x")
    tr.log({"kind": "train", "step": 1, "loss": 1.0})
    tr.log({"no": "validation either"})
    assert tr.offset() == 0
    assert tr.wandb_id is None
    tr.close()
    assert not run.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_is_a_dependency_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    with pytest.raises(DependencyError, match="tracking.tensorboard=false"):
        Tracker(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_missing_wandb_is_a_dependency_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(DependencyError, match=r"caspi\[wandb\].*tracking.wandb=false"):
        Tracker(tmp_path / "run", tensorboard=False, wandb=True)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_and_tags(tmp_path):
    with Tracker(tmp_path) as tr:
        for r in records(range(1, 4)):
            tr.log(r)
    scalars = tb_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/lr/projector", "train/grad_norm", "train/samples_per_s",
                            "train/mem_gib", "eval/wer", "eval/cer", "eval/wer/studio"}  # no step/epoch/str fields
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert scalars["eval/wer/studio"] == [(3, pytest.approx(1 / 3))]  # TB stores float32
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _age_event_files(tb_dir: Path) -> None:
    """Give the first run's event files an older timestamp in their names, as a real earlier process would have.

    TensorBoard reads event files in name order (`events.out.tfevents.<seconds>.<host>.<pid>.<counter>`); two
    writers in one test second would otherwise sort by their counter as a string, which breaks at 9 -> 10.
    """
    for f in tb_dir.glob("events.out.tfevents.*"):
        parts = f.name.split(".")
        parts[3] = "0000000001"
        f.rename(f.with_name(".".join(parts)))


def test_tensorboard_purges_events_after_resume_step(tmp_path):
    with Tracker(tmp_path) as tr:
        for s in range(1, 5):
            tr.log({"kind": "train", "step": s, "loss": float(s)})
            if s % 2 == 0:
                tr.log({"kind": "eval", "step": s, "wer": s / 10})
            if s == 2:
                offset = tr.offset()  # checkpoint after step 2 (its eval included)
    _age_event_files(tmp_path / "tensorboard")

    with Tracker(tmp_path, resume_offset=offset, resume_step=2) as tr:
        tr.log({"kind": "train", "step": 3, "loss": 30.0})  # preempted again before step 4

    scalars = tb_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    # eval@4 was not re-logged: only purge_step drops it; eval@2 precedes the checkpoint and must survive.
    assert scalars["eval/wer"] == [(2, pytest.approx(0.2))]
    assert [r["step"] for r in read_lines(tmp_path / "metrics.jsonl")] == [1, 2, 2, 3]


# ---------------------------------------------------------------------------------------------- secrets


def test_redact_nested():
    cfg = {"model": {"name": "qwen", "hf_token": "abc"}, "HF_TOKEN": "abc", "wandb_api_key": "k", "Password": "pw",
           "client_secret": {"id": "x"}, "stages": [{"at_step": 0, "auth_token": b"abc"}, "decoder"],
           "tokenizer": "qwen-tok", "eval": {"max_new_tokens": 256, "hub_token": None}, "lr": 1e-4}
    assert redact(cfg) == {
        "model": {"name": "qwen", "hf_token": "<redacted>"}, "HF_TOKEN": "<redacted>", "wandb_api_key": "<redacted>",
        "Password": "<redacted>", "client_secret": "<redacted>",
        "stages": [{"at_step": 0, "auth_token": "<redacted>"}, "decoder"],
        "tokenizer": "<redacted>",  # errs on the side of hiding: "token" matches anywhere in the key
        "eval": {"max_new_tokens": 256, "hub_token": None},  # numbers and None are not credentials
        "lr": 1e-4,
    }
    assert cfg["model"]["hf_token"] == "abc"  # the input is not modified


def _plant_secrets(monkeypatch) -> dict:
    monkeypatch.setenv("HF_TOKEN", MARKER)
    monkeypatch.setenv("WANDB_API_KEY", MARKER)
    return {"model": {"name": "tiny", "hub_token": MARKER}, "train": {"lr": 1e-4}}


def _assert_no_marker(run_dir: Path) -> None:
    files = all_bytes(run_dir)
    assert files
    leaks = [str(p) for p, data in files if MARKER.encode() in data]
    assert not leaks, f"secret marker found in {leaks}"


def test_no_secret_reaches_metrics_or_tensorboard(tmp_path, monkeypatch):
    config = _plant_secrets(monkeypatch)
    with Tracker(tmp_path, config=config, run_name="secret-test") as tr:
        for r in records():
            tr.log(r)
    _assert_no_marker(tmp_path)


# ---------------------------------------------------------------------------------------------- W&B (offline)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with its global config/cache dirs inside tmp_path: no network, no ~/.config writes."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    return wandb


def test_wandb_offline_run_and_resume_same_id(tmp_path, wandb_offline):
    run = tmp_path / "run"
    config = {"train": {"lr": 1e-4}}
    t0 = time.perf_counter()
    tr = Tracker(run, tensorboard=False, wandb=True, run_name="offline-test", config=config)
    run_id = tr.wandb_id
    assert run_id
    for r in records(range(1, 4)):
        tr.log(r)
    offset = tr.offset()
    tr.close()
    (first,) = (run / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")
    assert b"train/loss" in first.read_bytes() and b"eval/wer/studio" in first.read_bytes()

    with Tracker(run, tensorboard=False, wandb=True, run_name="offline-test", config=config,
                 resume_offset=offset, resume_step=3, wandb_id=run_id) as tr:
        assert tr.wandb_id == run_id  # the checkpoint's id continues the same W&B run
        tr.log({"kind": "train", "step": 4, "loss": 0.5})
    # Offline, a resumed run is a second directory with the same id (suffixed "-1" within one second);
    # `wandb sync` uploads both into the one W&B run.
    (second,) = set((run / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")) - {first}
    assert b"train/loss" in second.read_bytes()
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")][-1] == 4
    print(f"W&B offline: two runs in {time.perf_counter() - t0:.2f} s")


def test_no_secret_reaches_wandb_files(tmp_path, monkeypatch, wandb_offline):
    config = _plant_secrets(monkeypatch)
    with Tracker(tmp_path / "run", wandb=True, config=config, run_name="secret-test") as tr:
        for r in records():
            tr.log(r)
    assert (tmp_path / "run" / "wandb").is_dir()
    _assert_no_marker(tmp_path)  # the run dir and W&B's own cache/log dirs (see the fixture)
