"""From a run (or one of its checkpoints) to a model folder that `from_pretrained` loads: base model + trained
tensors, LoRA adapters merged, processor files alongside.

    model, processor, family = load_run("runs/round2")                   # newest checkpoint of the run
    model, processor, family = load_run("runs/round2/checkpoints/step-000500")
    export_run("runs/round2", "models/round2")                           # `caspi export`

A checkpoint holds only what was trained; the base is the one run.json pinned at the start of the run (the hub
commit sha, or the content hash of a local folder; for tiny models the randomly initialised model saved once under
`RUN/base/`), and loading refuses a base that no longer matches. Only state.json and the safetensors file of a
checkpoint are read here; its pickles (optimizer, RNG) are for resuming and are never opened.

An export folder carries `caspi_export.json`. `export_model` writes into an empty or new folder, or replaces an
earlier export (atomically: the old one stays complete until the new one is in place); any other non-empty folder
is refused, so `--out ~/models` cannot wipe a folder of other files.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from caspi.config import validate_recipe_dict
from caspi.errors import CaspiError, CheckpointError
from caspi.models.families import get_family, load_pinned
from caspi.train import checkpoint as ckpt

AUX_PREFIX = "aux."  # training-only tensors (the CTC head): not part of the exported model
EXPORT_MARKER = "caspi_export.json"  # in every export folder: what may be replaced by the next export


class ExportError(CaspiError):
    """The export target cannot be used (a file, or a non-empty folder that is not an earlier Caspi export)."""

    exit_code = 2


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder (its newest complete checkpoint) or a checkpoint folder."""
    path = Path(path)
    if (path / "run.json").is_file():
        found = ckpt.find_latest(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint yet")
        return path, found
    if ckpt.is_complete(path) and (path.parent.parent / "run.json").is_file():
        return path.parent.parent, path
    raise CheckpointError(f"{path}: neither a Caspi run folder (with run.json) nor one of its checkpoint folders")


def trained_language(spec: str | Path) -> str | None:
    """The recipe's `model.language` of a Caspi run or checkpoint folder (what its prompts were trained with);
    None for anything else (an export or hub id: the caller's recipe or the family default decides)."""
    try:
        run_dir, _ = resolve_run(spec)
    except CheckpointError:
        return None
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return validate_recipe_dict(meta["recipe"], source=str(run_dir / "run.json")).model.language


def load_run(path: str | Path, dtype: torch.dtype | None = None):
    """(model, processor, family) of a run's checkpoint, LoRA merged; `dtype` defaults to the recipe's."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-file loading bar for each tiny checkpoint drowns the output
    run_dir, folder = resolve_run(path)
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    recipe = validate_recipe_dict(meta["recipe"], source=str(run_dir / "run.json"))
    family = get_family(recipe.model.family)
    dtype = dtype or getattr(torch, recipe.model.dtype)
    model, processor = load_base(run_dir, meta, recipe, family, dtype)
    if recipe.lora.enabled:
        from caspi.models.unfreeze import apply_lora

        lora = recipe.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_regex=lora.target_regex)
    _, trained = ckpt.load_weights(folder)  # safetensors only: no pickle of a shared run folder is opened
    params = dict(model.named_parameters())
    weights = {k: v for k, v in trained.items() if not k.startswith(AUX_PREFIX)}
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise CheckpointError(f"{folder}: tensors not in the base model {recipe.model.name_or_path!r}: "
                              f"{', '.join(unknown[:5])}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))
    if recipe.lora.enabled:
        model = model.merge_and_unload()
    return model.eval(), processor, family


def load_base(run_dir: Path, meta: dict, recipe, family, dtype):
    """(model, processor) of the base a run trained on: the one run.json pinned (see `caspi.models.families.
    load_pinned`). A run.json from before pinning has none: its base is re-resolved as the recipe says, with a
    warning, since a moved hub branch or an edited folder cannot be detected."""
    pin = meta.get("base")
    if pin is not None:
        return load_pinned(family, pin, dtype, run_dir=run_dir)
    where = str(run_dir / "base") if recipe.model.tiny else recipe.model.name_or_path
    print(f"caspi: warning: {run_dir / 'run.json'} records no pinned base model (a run from an older Caspi); "
          f"loading {where} unverified", file=sys.stderr)
    if recipe.model.tiny:
        return family.load(where, dtype=dtype)
    return family.load(where, revision=recipe.model.revision, dtype=dtype)


def load_model(spec: str | Path, dtype: torch.dtype = torch.float32):
    """(model, processor, family) from anything a user calls a model: a Caspi run or checkpoint folder, an exported
    or other local `from_pretrained` folder, or a hub id (its family from the config's `model_type`)."""
    from transformers import AutoConfig

    from caspi.errors import ConfigError
    from caspi.models.families import family_names, from_pretrained_or_raise

    path = Path(spec)
    if (path / "run.json").is_file() or ckpt.is_complete(path):
        return load_run(path, dtype=dtype)
    config = from_pretrained_or_raise(AutoConfig.from_pretrained, "model", str(spec), None)
    family = next((get_family(n) for n in family_names() if config.model_type in get_family(n).model_types), None)
    if family is None:
        raise ConfigError(f"{spec}: a {config.model_type!r} model; Caspi's families handle "
                          f"{', '.join(family_names())}")
    model, processor = family.load(str(spec), dtype=dtype)
    return model.eval(), processor, family


def check_export_target(out: Path) -> None:
    """ExportError unless `out` may receive an export: new, empty, or an earlier Caspi export (with its marker). A
    replacement killed between its two renames is finished first (`ckpt.recover_aside`)."""
    ckpt.recover_aside(out, lambda aside: (aside / EXPORT_MARKER).is_file())
    aside = out.with_name(f".tmp-old-{out.name}")
    if aside.exists():
        raise ExportError(f"{aside}: in the way of replacing {out} and not a Caspi export; move it elsewhere")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is a file; export needs a new or empty folder, or an earlier export")
    entries = sorted(p.name for p in out.iterdir())
    if entries and EXPORT_MARKER not in entries:
        raise ExportError(
            f"{out}: the folder holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} (e.g. "
            f"{', '.join(entries[:3])}) and is not an earlier Caspi export (no {EXPORT_MARKER}); refusing to replace "
            "it. Export into a new or empty folder"
        )


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
    from caspi import __version__

    marker = {"caspi": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dtype": str(dtype),
              **(source or {})}
    (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False), encoding="utf-8")
    ckpt.fsync_tree(tmp)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder given as --out: nothing to keep aside
    ckpt.replace_folder(tmp, out)
    return out


def export_run(path: str | Path, out: str | Path) -> Path:
    """`caspi export`: the run's newest checkpoint (or the given checkpoint) as a `from_pretrained` folder."""
    check_export_target(Path(out))  # before loading a model: refuse a wrong --out at once
    run_dir, folder = resolve_run(path)
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    model, processor, _ = load_run(path)
    source = {"run": str(run_dir.resolve()), "checkpoint": folder.name, "base": meta.get("base")}
    return export_model(model, processor, out, source=source)
