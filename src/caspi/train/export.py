"""From a run (or one of its checkpoints) to a model folder that `from_pretrained` loads: base model + trained
tensors, LoRA adapters merged, processor files alongside.

    model, processor, family = load_run("runs/round2")                   # newest checkpoint of the run
    model, processor, family = load_run("runs/round2/checkpoints/step-000500")
    export_run("runs/round2", "models/round2")                           # `caspi export`

A checkpoint holds only what was trained; the base is the recipe's hub id at its revision, or for tiny models the
randomly initialised model saved once under `RUN/base/`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from caspi.config import validate_recipe_dict
from caspi.errors import CheckpointError
from caspi.models.families import get_family
from caspi.train import checkpoint as ckpt

AUX_PREFIX = "aux."  # training-only tensors (the CTC head): not part of the exported model


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


def load_run(path: str | Path, dtype: torch.dtype | None = None):
    """(model, processor, family) of a run's checkpoint, LoRA merged; `dtype` defaults to the recipe's."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-file loading bar for each tiny checkpoint drowns the output
    run_dir, folder = resolve_run(path)
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    recipe = validate_recipe_dict(meta["recipe"], source=str(run_dir / "run.json"))
    family = get_family(recipe.model.family)
    dtype = dtype or getattr(torch, recipe.model.dtype)
    if recipe.model.tiny:
        model, processor = family.load(str(run_dir / "base"), dtype=dtype)
    else:
        model, processor = family.load(recipe.model.name_or_path, revision=recipe.model.revision, dtype=dtype)
    if recipe.lora.enabled:
        from caspi.models.unfreeze import apply_lora

        lora = recipe.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_regex=lora.target_regex)
    snapshot = ckpt.load_checkpoint(folder)
    params = dict(model.named_parameters())
    weights = {k: v for k, v in snapshot.weights.items() if not k.startswith(AUX_PREFIX)}
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


def export_model(model: torch.nn.Module, processor, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save `model` (LoRA merged in place, float32 master weights cast to `dtype` or the frozen weights' dtype)
    and `processor` to `out`, atomically (temp folder, then rename)."""
    out = Path(out)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if dtype is None:
        dtypes = [p.dtype for p in model.parameters() if not p.requires_grad] or [torch.float32]
        dtype = max(set(dtypes), key=dtypes.count)
    model.to(dtype)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_run(path: str | Path, out: str | Path) -> Path:
    """`caspi export`: the run's newest checkpoint (or the given checkpoint) as a `from_pretrained` folder."""
    model, processor, _ = load_run(path)
    return export_model(model, processor, out)
