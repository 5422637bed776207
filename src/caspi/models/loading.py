"""Loading models: the one place that turns a Caspi run, a checkpoint, an export folder or a hub id into a model.

    model, processor, family = load_model("runs/round2")                 # newest checkpoint of a run, LoRA merged
    model, processor, family = load_model("runs/round2/checkpoints/step-000500")
    model, processor, family = load_model("Qwen/Qwen3-ASR-1.7B-hf")      # or an exported / from_pretrained folder
    model, processor = build_model(recipe, pin, dtype, run_dir=run_dir)  # what training starts from (base + LoRA)

Training (`caspi.train.loop`), evaluation, export and the audit's ASR scorer all load through here, so a model is
rebuilt from a recipe in one way: the pinned base (`pin_base` at the start of a run, `load_pinned` at every later
load), LoRA adapters as the recipe says (`build_model`), then the trained tensors (`load_trained`).

The run folder is written by `caspi.train.checkpoint` (and run.json by the loop); this module holds the read side of
that layout: which checkpoint is complete and newest, and its state.json and safetensors file. It never opens a
checkpoint's pickles (optimizer, RNG): those are for resuming, and unpickling a shared folder's files can run code.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from caspi.config import Recipe, validate_recipe_dict
from caspi.errors import CheckpointError, ConfigError
from caspi.models.convert import ensure_native, folder_sha256
from caspi.models.families import (
    ModelFamily,
    family_names,
    first_line,
    from_pretrained_or_raise,
    get_family,
    is_local_path,
)
from caspi.models.unfreeze import apply_lora

RUN_FILE = "run.json"  # in a run folder: the recipe, the pinned base, the manifests' hashes
CHECKPOINTS = "checkpoints"  # in a run folder: one folder a checkpoint, `latest` naming the newest
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
LATEST_FILE = "latest"
CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})(?:-m(\d+))?$")
# Tensors trained but not part of the model (the auxiliary CTC head): saved in checkpoints under this prefix, left
# out of exports and of `load_model`.
AUX_PREFIX = "aux."


# ---------------------------------------------------------------------------------------------------------------
# The run folder, read side (caspi.train.checkpoint writes it)


def checkpoint_order(name: str) -> tuple[int, int]:
    m = CHECKPOINT_NAME.match(name)
    assert m is not None, name
    return int(m.group(1)), int(m.group(2) or 0)


def is_complete(folder: Path) -> bool:
    """A checkpoint folder with its state.json, the file written last."""
    return folder.is_dir() and CHECKPOINT_NAME.match(folder.name) is not None and (folder / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: checkpoint_order(p.name))


def find_latest(root: Path) -> Path | None:
    """The checkpoint to resume from: `latest` if it names a complete folder, else the newest complete one."""
    pointer = root / LATEST_FILE
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if is_complete(target):
            return target
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(folder: Path) -> dict[str, Any]:
    if not is_complete(folder):
        raise CheckpointError(f"{folder}: not a complete checkpoint (no {STATE_FILE})")
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{folder}: cannot read checkpoint file {STATE_FILE} ({type(exc).__name__}: {exc})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(folder / WEIGHTS_FILE)
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ... for damaged files
        raise CheckpointError(
            f"{folder}: cannot read checkpoint file {WEIGHTS_FILE} ({type(exc).__name__}: {exc})") from None


def load_weights(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state.json, trained tensors) of a checkpoint: what eval, export and the audit need. Reads the JSON and the
    safetensors file only; the optimizer and rank pickles are never opened."""
    return read_state(folder), read_weights(folder)


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder (its newest complete checkpoint) or a checkpoint folder."""
    path = Path(path)
    if (path / RUN_FILE).is_file():
        found = find_latest(path / CHECKPOINTS)
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint yet")
        return path, found
    if is_complete(path) and (path.parent.parent / RUN_FILE).is_file():
        return path.parent.parent, path
    raise CheckpointError(f"{path}: neither a Caspi run folder (with {RUN_FILE}) nor one of its checkpoint folders")


def read_run(run_dir: Path) -> tuple[dict[str, Any], Recipe]:
    """(run.json, its recipe validated) of a run folder."""
    meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    return meta, validate_recipe_dict(meta["recipe"], source=str(run_dir / RUN_FILE))


def trained_language(spec: str | Path) -> str | None:
    """The recipe's `model.language` of a Caspi run or checkpoint folder (what its prompts were trained with);
    None for anything else (an export or hub id: the caller's recipe or the family default decides)."""
    try:
        run_dir, _ = resolve_run(spec)
    except CheckpointError:
        return None
    return read_run(run_dir)[1].model.language


# ---------------------------------------------------------------------------------------------------------------
# Building a model from a recipe: the base, LoRA, the trained tensors


def build_model(recipe: Recipe, pin: dict[str, Any] | None, dtype: torch.dtype, *, run_dir: Path):
    """(model, processor) a run trains: its pinned base (`load_base`) with LoRA adapters when the recipe enables
    them. Seeds torch with `train.seed` before the adapters are made, so their initial values (and whatever the
    caller initialises next, such as the CTC head) are the same on every rank and at every rebuild."""
    model, processor = load_base(run_dir, pin, recipe, get_family(recipe.model.family), dtype)
    torch.manual_seed(recipe.train.seed)
    if recipe.lora.enabled:
        lora = recipe.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_regex=lora.target_regex)
    return model, processor


def load_base(run_dir: Path, pin: dict[str, Any] | None, recipe: Recipe, family: ModelFamily, dtype):
    """(model, processor) of the base a run trains on: the one run.json pinned (`load_pinned`). A run.json from
    before pinning has none (`pin` None): its base is re-resolved as the recipe says, with a warning, since a moved
    hub branch or an edited folder cannot be detected."""
    if pin is not None:
        return load_pinned(family, pin, dtype, run_dir=run_dir)
    where = str(run_dir / "base") if recipe.model.tiny else recipe.model.name_or_path
    print(f"caspi: warning: {run_dir / RUN_FILE} records no pinned base model (a run from an older Caspi); "
          f"loading {where} unverified", file=sys.stderr)
    if recipe.model.tiny:
        return family.load(where, dtype=dtype)
    return family.load(where, revision=recipe.model.revision, dtype=dtype)


def load_trained(model: torch.nn.Module, weights: dict[str, torch.Tensor], *,
                 aux: dict[str, torch.nn.Module] | None = None, source: str = "the checkpoint") -> None:
    """Copy trained tensors (a checkpoint's `trainable.safetensors`) into `model`, each in its target's dtype.

    Names under `AUX_PREFIX` belong to training-only modules: `aux` maps their prefix after it (`"ctc_head."`) to
    the module; without an entry they are skipped (they are not part of the model). Any other name the model
    lacks is a CheckpointError naming `source`: the tensors were trained on another base."""
    params = dict(model.named_parameters())
    aux = aux or {}
    targets: dict[str, torch.Tensor] = {}
    unknown = []
    for name in weights:
        if name.startswith(AUX_PREFIX):
            rest = name[len(AUX_PREFIX):]
            prefix = next((p for p in aux if rest.startswith(p)), None)
            if prefix is not None:
                targets[name] = dict(aux[prefix].named_parameters())[rest[len(prefix):]]
        elif name in params:
            targets[name] = params[name]
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"{source}: tensors not in the model: {', '.join(sorted(unknown)[:5])}")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(weights[name].to(target.dtype))


def load_run(path: str | Path, dtype: torch.dtype | None = None):
    """(model, processor, family) of a run's checkpoint, LoRA merged, in eval mode; `dtype` defaults to the
    recipe's. Reads run.json, state.json and the safetensors file only: no pickle of a shared run folder."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-file loading bar for each tiny checkpoint drowns the output
    run_dir, folder = resolve_run(path)
    meta, recipe = read_run(run_dir)
    model, processor = build_model(recipe, meta.get("base"), dtype or getattr(torch, recipe.model.dtype),
                                   run_dir=run_dir)
    load_trained(model, read_weights(folder), source=f"{folder} (base {recipe.model.name_or_path!r})")
    if recipe.lora.enabled:
        model = model.merge_and_unload()
    return model.eval(), processor, get_family(recipe.model.family)


def load_model(spec: str | Path, dtype: torch.dtype = torch.float32, processor_from: str | None = None):
    """(model, processor, family) from anything a user calls a model: a Caspi run or checkpoint folder, an exported
    or other local `from_pretrained` folder, or a hub id (its family from the config's `model_type`). A Qwen3-ASR
    folder in the original `qwen-asr` layout or an HF Trainer `checkpoint-N/` is converted first, once, into a cache
    (`caspi.models.convert.ensure_native`: one line on stderr names the copy); `processor_from` (hub id or folder)
    supplies processor files such a folder lacks."""
    from transformers import AutoConfig

    path = Path(spec)
    if (path / RUN_FILE).is_file() or is_complete(path):
        return load_run(path, dtype=dtype)
    if is_local_path(str(spec)) and path.is_dir():
        spec = ensure_native(path, processor_from=processor_from)
    config = from_pretrained_or_raise(AutoConfig.from_pretrained, "model", str(spec), None)
    family = next((get_family(n) for n in family_names() if config.model_type in get_family(n).model_types), None)
    if family is None:
        raise ConfigError(f"{spec}: a {config.model_type!r} model; Caspi's families handle "
                          f"{', '.join(family_names())}")
    model, processor = family.load(str(spec), dtype=dtype)
    return model.eval(), processor, family


# ---------------------------------------------------------------------------------------------------------------
# Pinning the base model. A checkpoint holds only the trained tensors; they are grafted onto the base at every load,
# so a run records at its start exactly which base it trains on (`pin_base`, stored in run.json) and every later
# load (resume, eval, export) takes that one (`load_pinned`): a hub id at the resolved commit sha, a local folder
# only if its content hash is unchanged.

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def is_commit_sha(revision: str | None) -> bool:
    """Whether a revision is already a full commit sha (40 lower-case hex digits): nothing to resolve."""
    return revision is not None and _COMMIT_SHA.match(revision) is not None


def cached_hub_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit sha the local hub cache holds for `revision` (None: main) of `repo_id`, or None when it holds
    none (or `repo_id` is no valid hub id). No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    except Exception:  # noqa: BLE001 - an invalid repo id raises a validation error: nothing cached
        return None
    # The cache keeps `refs/<revision>` → sha and `snapshots/<sha>/config.json`; the snapshot folder is the sha.
    return Path(cached).parent.name if isinstance(cached, str) else None


def resolve_hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit sha that `revision` (a branch, tag or sha; None: main) of hub model `repo_id` names: asked of
    the hub, or, offline (HF_HUB_OFFLINE=1 or no network), read from the local hub cache. CheckpointError when
    neither knows it."""
    if is_commit_sha(revision):
        return revision
    from huggingface_hub import HfApi, constants

    problem = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(repo_id, revision=revision).sha
            if sha:
                return sha
        except Exception as exc:  # noqa: BLE001 - requests, hub HTTP and validation errors: fall back to the cache
            problem = f"the hub did not answer ({type(exc).__name__}: {first_line(exc)})"
    cached = cached_hub_revision(repo_id, revision)
    if cached is not None:
        return cached
    raise CheckpointError(
        f"cannot resolve hub model {repo_id!r} at revision {revision or 'main'!r} to a commit: {problem} and the "
        "local hub cache does not hold it; connect once, or set model.revision to a 40-hex commit sha"
    )


def pin_base(name_or_path: str, revision: str | None = None, *, in_run: bool = False,
             folder: str | Path | None = None) -> dict[str, Any]:
    """What run.json records about the base: `{"kind": "hub", "name_or_path", "requested_revision", "revision":
    <commit sha>}` for a hub id; `{"kind": "folder", "name_or_path", "sha256": <folder_sha256>}` for a local folder
    (`in_run`: the path is relative to the run folder, whose copy is `folder`; the tiny models' RUN/base)."""
    if in_run or is_local_path(name_or_path):
        local = Path(folder) if folder is not None else Path(name_or_path)
        if not local.is_dir():
            raise CheckpointError(f"local model folder {str(local)!r} does not exist")
        # An absolute path outside the run folder, so eval/export from another working directory find it.
        recorded = name_or_path if in_run else str(local.resolve())
        return {"kind": "folder", "name_or_path": recorded, "in_run": in_run, "sha256": folder_sha256(local)}
    return {"kind": "hub", "name_or_path": name_or_path, "requested_revision": revision,
            "revision": resolve_hub_revision(name_or_path, revision)}


def load_pinned(family: ModelFamily, pin: dict[str, Any], dtype: torch.dtype | str,
                run_dir: str | Path | None = None) -> tuple[torch.nn.Module, Any]:
    """Load exactly the base that `pin` (from `pin_base`, via run.json) records. A hub id loads at the recorded
    commit; a local folder loads only if it still hashes to the recorded sha256, else a CheckpointError names
    both hashes (the trained tensors would be grafted onto another model)."""
    if pin["kind"] == "hub":
        return family.load(pin["name_or_path"], revision=pin["revision"], dtype=dtype)
    folder = Path(pin["name_or_path"])
    if pin.get("in_run"):
        assert run_dir is not None, "a base inside the run folder needs run_dir"
        folder = Path(run_dir) / folder
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: the run's base model folder is gone (run.json records sha256 "
                              f"{pin['sha256']})")
    actual = folder_sha256(folder)
    if actual != pin["sha256"]:
        raise CheckpointError(
            f"{folder}: the base model changed since the run started: run.json records sha256 {pin['sha256']}, the "
            f"folder now hashes to {actual}; the checkpoint's tensors belong to the recorded one. Restore those "
            "files, or train a new run on the changed base"
        )
    return family.load(str(folder), dtype=dtype)
