"""From a run (or one of its checkpoints) to a model folder that `from_pretrained` loads: base model + trained
tensors, LoRA adapters merged, processor files alongside.

    export_run("runs/round2", "models/round2")                           # `caspi export`

The model comes from `caspi.models.loading.load_run`: the base run.json pinned, the checkpoint's trained tensors,
LoRA merged; a base that no longer matches its pin is refused there.

An export folder carries `caspi_export.json`. `export_model` writes into an empty or new folder, or replaces an
earlier export (atomically: the old one stays complete until the new one is in place); any other non-empty folder
is refused, so `--out ~/models` cannot wipe a folder of other files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from caspi import __version__
from caspi.errors import CaspiError
from caspi.folders import check_output_folder, fsync_tree
from caspi.models.loading import load_run, read_run, resolve_run
from caspi.train import checkpoint as ckpt

EXPORT_MARKER = "caspi_export.json"  # in every export folder: what may be replaced by the next export


class ExportError(CaspiError):
    """The export target cannot be used (a file, or a non-empty folder that is not an earlier Caspi export)."""

    exit_code = 2


def check_export_target(out: Path) -> None:
    """ExportError unless `out` may receive an export: new, empty, or an earlier Caspi export (with its marker). A
    replacement killed between its two renames is finished first (`ckpt.recover_aside`)."""
    ckpt.recover_aside(out, lambda aside: (aside / EXPORT_MARKER).is_file())
    aside = out.with_name(f".tmp-old-{out.name}")
    if aside.exists():
        raise ExportError(f"{aside}: in the way of replacing {out} and not a Caspi export; move it elsewhere")
    check_output_folder(out, marker=EXPORT_MARKER, what="export", error=ExportError)


def export_model(model: torch.nn.Module, processor, out: str | Path, dtype: torch.dtype | None = None,
                 source: dict | None = None) -> Path:
    """Save `model` (LoRA merged in place, float32 master weights cast to `dtype` or the frozen weights' dtype)
    and `processor` to `out` with a `caspi_export.json` marker (`source`: what was exported). `out` must be new,
    empty or an earlier export (`check_export_target`); it is written to a temp sibling, fsynced, and swapped in
    with `ckpt.replace_folder`, so a crash leaves the old export or the new one, complete."""
    out = Path(out)
    check_export_target(out)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if dtype is None:
        dtypes = [p.dtype for p in model.parameters() if not p.requires_grad] or [torch.float32]
        dtype = max(set(dtypes), key=dtypes.count)
    model.to(dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-caspi-export-{out.name}")
    if tmp.exists():  # a temp folder of an export killed while writing (the name is ours alone)
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    marker = {"caspi": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dtype": str(dtype),
              **(source or {})}
    (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False), encoding="utf-8")
    fsync_tree(tmp)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder given as --out: nothing to keep aside
    ckpt.replace_folder(tmp, out)
    return out


def export_run(path: str | Path, out: str | Path) -> Path:
    """`caspi export`: the run's newest checkpoint (or the given checkpoint) as a `from_pretrained` folder."""
    check_export_target(Path(out))  # before loading a model: refuse a wrong --out at once
    run_dir, folder = resolve_run(path)
    meta, _ = read_run(run_dir)
    model, processor, _ = load_run(path)
    source = {"run": str(run_dir.resolve()), "checkpoint": folder.name, "base": meta.get("base")}
    return export_model(model, processor, out, source=source)
