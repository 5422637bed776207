"""`caspi doctor`: the pre-flight checklist (seeds 000, 002 and 004) as code, run before a paid hour starts.

Each check returns a `Check(name, status, reason, fix)`: PASS, WARN (the run can start but something is off) or FAIL
(the run would fail or is not what the recipe plans), a one-line reason and a one-line fix. `run_checks(None)` checks
the machine only; `run_checks(recipe)` adds what the recipe asks of it:

    machine   python, packages, torch (build: CUDA, ROCm or CPU), gpu, alloc-conf, disk, hub, hf-token,
              espeak-ng, device-step (seed 004's health check: a small forward/backward on the device)
    recipe    model (cached, reachable or a local folder), data (manifests), phase0 (the training gate's own
              check), memory (caspi.plan's memory plan per phase), disk (what the run writes), wandb

Everything the checks look at comes through `Probes` (the environment, torch's facts, disk usage, the hub, the
clock, ...), so a test can make each check pass and fail without a GPU or a network. Network checks are skippable
(`network=False`, `--offline`, or HF_HUB_OFFLINE=1) and time out after `timeout` seconds: an unreachable hub is a
WARN, never a hang. Secrets are only ever tested for presence: no check prints a token.

The rules are not written twice: the Phase 0 check is `caspi.audit.gate.check_gate` (what `caspi train` runs), the
GPU memory shortfall is `caspi.train.resources.hardware_warnings` (what training warns about), the checkpoint size
follows `caspi.train.checkpoint` (trained tensors as float32 masters + AdamW's two moments), the memory per GPU is
`caspi.plan`'s, and espeak-ng is found as `caspi.data.synth` finds it.
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from caspi.audit.gate import CAUTION, check_gate
from caspi.config import ModelConfig, Recipe
from caspi.data import synth
from caspi.data.cuts import read_manifest
from caspi.errors import CaspiError
from caspi.models.families import is_local_path
from caspi.models.loading import cached_hub_revision
from caspi.plan import phase_memory
from caspi.plan.params import plan_model
from caspi.train.resources import MEMORY_TOLERANCE, cpu_has_native_bf16, hardware_warnings

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
EXIT_OK, EXIT_FAIL = 0, 1

# The packages whose versions decide whether a run works (pyproject's pins are read from the installed metadata).
KEY_PACKAGES = ("torch", "transformers", "lhotse", "peft", "jiwer", "soundfile", "soxr")
# Bytes per trained parameter in a checkpoint: the float32 master copy in trainable.safetensors (the loop keeps
# trained parameters in float32 under a bf16 model) + AdamW's exp_avg and exp_avg_sq in optimizer.pt (float32).
CHECKPOINT_BYTES_PER_PARAM = 4 + 4 + 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DISK_MARGIN = 1.2  # free space below need × this warns: logs, tensorboard, the OS and other runs share the disk
GiB = 2**30
HUB_PROBE_REPO = ModelConfig().name_or_path  # the default model: public, and what most runs download
DOWNLOADS = "not cached yet: the run downloads it"  # in a model check's reason: the hub cache needs room too


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    reason: str  # one line
    fix: str = ""  # one line; "" when there is nothing to do

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # total memory of the device


@dataclass(frozen=True)
class TorchFacts:
    """What torch says about this machine (`torch_facts`)."""

    version: str  # torch.__version__
    cuda: str | None  # torch.version.cuda: the CUDA the build was made for; None on CPU and ROCm builds
    hip: str | None  # torch.version.hip: the ROCm (HIP) version of a ROCm build
    gpus: tuple[Gpu, ...] = ()  # the devices torch.cuda sees (CUDA and ROCm alike)
    driver: str | None = None  # the GPU driver's version, when nvidia-smi / rocm-smi tells it
    problem: str | None = None  # why torch sees no GPU on a GPU build (its own warning), if it says
    cpu_bf16: bool = True  # the CPU computes bf16 in hardware (`caspi.train.resources.cpu_has_native_bf16`)

    @property
    def build(self) -> str:
        if self.hip:
            return f"ROCm {self.hip}"
        if self.cuda:
            return f"CUDA {self.cuda}"
        return "CPU build"


def _driver_version() -> str | None:
    """The NVIDIA (or AMD) driver version from the vendor's tool, or None; never more than a few seconds."""
    commands = (["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                ["rocm-smi", "--showdriverversion"])
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        lines = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("=")]
        if lines:
            # rocm-smi prints "Driver version: 6.8.5"; nvidia-smi one version per GPU (all equal).
            return lines[0].split(":")[-1].strip()
    return None


def torch_facts() -> TorchFacts:
    """This machine as torch sees it. Imports torch (seconds); never raises."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    gpus: tuple[Gpu, ...] = ()
    problem = None
    if available:
        gpus = tuple(Gpu(p.name, p.total_memory / GiB)
                     for p in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())))
    elif caught:  # e.g. "CUDA initialization: The NVIDIA driver on your system is too old"
        problem = str(caught[0].message).strip().splitlines()[0]
    return TorchFacts(torch.__version__, torch.version.cuda, getattr(torch.version, "hip", None), gpus,
                      _driver_version() if gpus else None, problem, cpu_has_native_bf16())


def tiny_step(device: str) -> None:
    """Seed 004's health check: a small chain of ops (matmul, softmax, layer norm) forward and backward on `device`,
    synchronised, so a broken driver or an unsupported card (HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION on ROCm)
    raises here rather than in step 1. A few milliseconds."""
    import torch

    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=generator).to(dev).requires_grad_(True)  # (B, D)
    w = torch.randn(64, 64, generator=generator).to(dev).requires_grad_(True)  # (D, D)
    h = torch.nn.functional.layer_norm((x @ w).softmax(-1) @ w.T, (64,))  # (B, D)
    loss = h.square().mean()
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    if not (torch.isfinite(loss).item() and torch.isfinite(w.grad).all().item()):
        raise RuntimeError(f"non-finite loss or gradient on {device}")


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _requirements() -> tuple[str | None, list[str]]:
    """(Requires-Python, the dependency specs) of the installed caspi: pyproject.toml as installed, so a wheel
    install checks the same pins as a clone."""
    meta = metadata.metadata("caspi")
    return meta.get("Requires-Python"), metadata.requires("caspi") or []


def _hub_reachable(repo_id: str, revision: str | None, timeout: float) -> None:
    """Raises unless the hub answers for `repo_id` within `timeout` seconds."""
    from huggingface_hub import HfApi

    HfApi().model_info(repo_id, revision=revision, timeout=timeout)


def _hf_token(environ: Mapping[str, str]) -> str | None:
    """Where a Hugging Face token comes from ("HF_TOKEN", a token file's path), or None. The token is not
    returned: doctor only says whether one is there."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if environ.get(var, "").strip():
            return var
    home = environ.get("HF_HOME") or os.path.join(environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                  "huggingface")
    path = Path(environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))
    try:
        return str(path) if path.read_text(encoding="utf-8").strip() else None
    except OSError:
        return None


def _wandb_key(environ: Mapping[str, str]) -> str | None:
    """Where W&B's API key comes from (WANDB_API_KEY or the .netrc entry `wandb login` writes), or None."""
    if environ.get("WANDB_API_KEY", "").strip():
        return "WANDB_API_KEY"
    path = environ.get("NETRC") or os.path.expanduser("~/.netrc")
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        return path if netrc.netrc(path).authenticators(host) else None
    except (OSError, netrc.NetrcParseError):
        return None


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        return None


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _manifest_audio_bytes(path: str) -> int:
    """Bytes of the audio files a local manifest names (each file once)."""
    files = {s.source for cut in read_manifest(path) for s in cut.recording.sources if s.type == "file"}
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f))


_PLANS: dict[str, Any] = {}  # recipe fingerprint → caspi.plan ModelPlan: memory and disk share one meta build


def _model_plan(recipe: Recipe):
    key = recipe.fingerprint()
    if key not in _PLANS:
        _PLANS[key] = plan_model(recipe)
    return _PLANS[key]


def _memory_plans(recipe: Recipe, gpu_memory_gib: float | None) -> list[tuple[str, Any]]:
    """(phase name, caspi.plan MemoryPlan) for each phase of the recipe, at its micro-batch and world size."""
    model = _model_plan(recipe)
    memory = phase_memory(recipe, model, gpu_memory_gib=gpu_memory_gib)
    return [(phase.name, m) for phase, m in zip(model.phases, memory, strict=True)]


def _model_sizes(recipe: Recipe) -> tuple[int, int]:
    """(total parameters, parameters trained by the end of the run) from caspi.plan's meta-device model: a
    checkpoint holds every parameter trained so far (caspi.train.checkpoint), LoRA adapters and the CTC head
    included."""
    model = _model_plan(recipe)
    trained = max((phase.trained_so_far for phase in model.phases), default=0)
    if recipe.train.ctc_aux_weight > 0:  # the training-only CTC head, Linear(H, V + 1) with bias ("aux." tensors)
        trained += (model.dims.hidden + 1) * (model.dims.vocab + 1)
    return model.total, trained


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


@dataclass
class Probes:
    """Everything a check reads of the world. Defaults probe this machine; tests replace them."""

    torch: Callable[[], TorchFacts] = torch_facts
    version: Callable[[str], str | None] = _installed_version  # installed version of a distribution, or None
    requirements: Callable[[], tuple[str | None, list[str]]] = _requirements
    python: Callable[[], str] = platform.python_version
    disk_usage: Callable[[str], Any] = shutil.disk_usage  # .total, .used, .free in bytes
    hf_token: Callable[[Mapping[str, str]], str | None] = _hf_token
    hub_cached: Callable[[str, str | None], str | None] = cached_hub_revision  # the cached commit, or None
    hub_reachable: Callable[[str, str | None, float], None] = _hub_reachable
    wandb_key: Callable[[Mapping[str, str]], str | None] = _wandb_key
    espeak: Callable[[], str] = synth._require_espeak  # the binary's path; DependencyError when missing or mute
    step: Callable[[str], None] = tiny_step
    ram_gib: Callable[[], float | None] = _ram_gib
    memory: Callable[[Recipe, float | None], list[tuple[str, Any]]] = _memory_plans
    model_sizes: Callable[[Recipe], tuple[int, int]] = _model_sizes
    folder_bytes: Callable[[Path], int] = _folder_bytes
    audio_bytes: Callable[[str], int] = _manifest_audio_bytes
    hub_cache: Callable[[], str] = _hub_cache_dir
    clock: Callable[[], float] = time.perf_counter


def _with_timeout(fn: Callable[[], Any], timeout: float) -> tuple[bool, BaseException | None]:
    """Run `fn` in a daemon thread: (finished in time, its exception or None). A DNS lookup or a socket that hangs
    past `timeout` is left behind rather than waited for."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported, whatever the hub client raises
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return (True, result[0]) if result else (False, None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------- machine


def check_python(probes: Probes) -> Check:
    required, _ = probes.requirements()
    version = probes.python()
    if required and not SpecifierSet(required).contains(version, prereleases=True):
        return Check("python", FAIL, f"Python {version}; caspi requires {required}",
                     f"use a Python {required} virtual environment")
    return Check("python", PASS, f"Python {version}" + (f" (caspi requires {required})" if required else ""))


def _pins(probes: Probes) -> dict[str, Requirement]:
    _, specs = probes.requirements()
    pins = {}
    for spec in specs:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):  # extras (dev, wandb) are not required
            pins[req.name.lower()] = req
    return pins


def _package_problem(name: str, version: str | None, pin: Requirement | None) -> str | None:
    if version is None:
        return f"{name} not installed"
    if pin is not None and pin.specifier and not pin.specifier.contains(version, prereleases=True):
        return f"{name} {version} outside {pin.specifier}"
    return None


def check_packages(probes: Probes) -> Check:
    """The key packages besides torch (checked with its build) against pyproject's pins."""
    pins = _pins(probes)
    names = [n for n in KEY_PACKAGES if n != "torch"]
    versions = {n: probes.version(n) for n in names}
    problems = [p for n in names if (p := _package_problem(n, versions[n], pins.get(n)))]
    if problems:
        wanted = " ".join(f"'{pins[n]}'" if n in pins else n for n in names
                          if _package_problem(n, versions[n], pins.get(n)))
        return Check("packages", FAIL, "; ".join(problems), f"pip install {wanted}")
    return Check("packages", PASS, ", ".join(f"{n} {versions[n]}" for n in names))


def check_torch(probes: Probes, environ: Mapping[str, str]) -> Check:
    facts = probes.torch()
    problem = _package_problem("torch", facts.version, _pins(probes).get("torch"))
    if problem:
        return Check("torch", FAIL, f"{problem} ({facts.build})", f"pip install '{_pins(probes)['torch']}'")
    reason = f"{facts.version} ({facts.build})"
    if facts.hip:  # seed 004: consumer Radeon cards run only with the gfx override; say what is set
        reason += "; " + ", ".join(f"{var}={environ.get(var) or 'unset'}"
                                   for var in ("HSA_OVERRIDE_GFX_VERSION", "PYTORCH_HIP_ALLOC_CONF"))
    return Check("torch", PASS, reason)


def _gpu_line(facts: TorchFacts) -> str:
    names: dict[str, int] = {}
    for gpu in facts.gpus:
        label = f"{gpu.name} {gpu.memory_gib:.1f} GiB"
        names[label] = names.get(label, 0) + 1
    listed = ", ".join(f"{n} × {label}" for label, n in names.items())
    return listed + (f", driver {facts.driver}" if facts.driver else "")


def _emulated_bf16(facts: TorchFacts, recipe: Recipe) -> Check | None:
    """A WARN when a CPU recipe asks for bf16 autocast on a CPU that would emulate it."""
    if recipe.train.precision != "bf16" or facts.cpu_bf16:
        return None
    return Check("gpu", WARN, "training runs on CPU with train.precision bf16, and this CPU has no native bf16 "
                              "(AVX512-BF16 or AMX): its bf16 kernels are emulated, maybe slower than float32",
                 "train.precision=fp32")


def check_gpu(probes: Probes, recipe: Recipe | None) -> Check:
    """The GPUs torch sees, against the recipe's hardware section (accelerator, gpus_per_node, gpu_memory_gib)."""
    facts = probes.torch()
    wants_gpu = recipe is not None and recipe.hardware.accelerator == "cuda"
    if recipe is not None and not wants_gpu and (emulated := _emulated_bf16(facts, recipe)):
        return emulated
    if not facts.gpus:
        why = facts.problem or ("torch is a CPU build" if facts.build == "CPU build" else "torch sees no device")
        if wants_gpu:
            return Check("gpu", FAIL, f"hardware.accelerator is cuda but there is no GPU here ({why})",
                         "--cpu-fallback or hardware.accelerator=cpu")
        return Check("gpu", PASS if recipe is not None else WARN, f"no GPU ({why}); training runs on CPU",
                     "" if recipe is not None else "for GPU training install a CUDA or ROCm build of torch")
    line = _gpu_line(facts)
    if recipe is None or not wants_gpu:
        return Check("gpu", PASS, line + ("; the recipe trains on CPU" if recipe is not None else ""))
    hw = recipe.hardware
    if len(facts.gpus) < hw.gpus_per_node:
        return Check("gpu", FAIL, f"{len(facts.gpus)} GPU(s) here, the recipe's hardware.gpus_per_node is "
                                  f"{hw.gpus_per_node}: {line}",
                     f"hardware.gpus_per_node={len(facts.gpus)} (the effective batch is kept by accumulation)")
    smallest = min(gpu.memory_gib for gpu in facts.gpus)
    # The training loop's own rule (MEMORY_TOLERANCE): the world size is passed as planned, so only memory counts.
    short = [msg for event, msg in hardware_warnings(recipe, hw.world_size, smallest) if event == "gpu_memory_short"]
    if short:
        return Check("gpu", WARN, f"{line}; less than hardware.gpu_memory_gib ({hw.gpu_memory_gib:g} GiB, "
                                  f"{MEMORY_TOLERANCE:.0%} tolerance)",
                     f"hardware.gpu_memory_gib={smallest:.0f} and check `caspi plan`, or a larger card")
    return Check("gpu", PASS, line)


def check_alloc_conf(probes: Probes, environ: Mapping[str, str], recipe: Recipe | None) -> Check:
    """PYTORCH_CUDA_ALLOC_CONF (PYTORCH_HIP_ALLOC_CONF on ROCm): expandable segments cut fragmentation when the
    batch shapes vary, as bucketed speech batches do (seeds 000, 001, 002 all set it)."""
    facts = probes.torch()
    if not facts.gpus or (recipe is not None and recipe.hardware.accelerator == "cpu"):
        return Check("alloc-conf", PASS, "not used: no GPU training here")
    var = "PYTORCH_HIP_ALLOC_CONF" if facts.hip else "PYTORCH_CUDA_ALLOC_CONF"
    value = environ.get(var, "")
    if "expandable_segments:true" in value.replace(" ", "").lower():
        return Check("alloc-conf", PASS, f"{var}={value}")
    return Check("alloc-conf", WARN, f"{var} is {value or 'unset'}: varying batch shapes fragment GPU memory",
                 f"export {var}=expandable_segments:True")


def check_hub(probes: Probes, network: bool, timeout: float) -> Check:
    """Whether the Hugging Face hub answers (for the default model): offline, only cached models and datasets load."""
    if not network:
        return Check("hub", PASS, "not asked (--offline or HF_HUB_OFFLINE): only cached models load")
    done, error = _with_timeout(lambda: probes.hub_reachable(HUB_PROBE_REPO, None, timeout), timeout)
    if done and error is None:
        return Check("hub", PASS, f"huggingface.co answers ({HUB_PROBE_REPO})")
    why = _short(error) if error is not None else f"no answer in {timeout:g} s"
    return Check("hub", WARN, f"the Hugging Face hub is not reachable ({why}): only cached models load",
                 "connect, or fill the hub cache on a connected machine and set HF_HUB_OFFLINE=1 here")


def check_hf_token(probes: Probes, environ: Mapping[str, str]) -> Check:
    source = probes.hf_token(environ)
    if source:
        return Check("hf-token", PASS, f"a Hugging Face token is set ({source}; not shown)")
    return Check("hf-token", WARN, "no Hugging Face token: public models download, gated ones and uploads fail",
                 "`hf auth login`, or export HF_TOKEN")


def check_espeak(probes: Probes) -> Check:
    try:
        binary = probes.espeak()
    except (CaspiError, OSError, subprocess.SubprocessError) as exc:
        return Check("espeak-ng", WARN, f"{_short(exc)} (only `caspi demo` and `caspi synth` need it)",
                     synth.INSTALL_HINT)
    return Check("espeak-ng", PASS, f"{binary} speaks Hebrew (for `caspi demo` and `caspi synth`)")


def check_device_step(probes: Probes, recipe: Recipe | None) -> Check:
    """Seed 004's health check on the device the run would use; a failing GPU is a WARN with the CPU fallback."""
    facts = probes.torch()
    device = "cuda" if facts.gpus and (recipe is None or recipe.hardware.accelerator == "cuda") else "cpu"
    try:
        probes.step(device)  # the first call also pays for lazy initialisation (kernels, threads, CUDA context)
        started = probes.clock()
        probes.step(device)
    except Exception as exc:  # noqa: BLE001 - any device failure is the finding
        if device == "cpu":
            return Check("device-step", FAIL, f"forward/backward on cpu failed: {_short(exc)}",
                         "reinstall torch (pip install --force-reinstall torch)")
        return Check("device-step", WARN, f"forward/backward on {device} failed: {_short(exc)}",
                     "train with --cpu-fallback or hardware.accelerator=cpu; on ROCm try HSA_OVERRIDE_GFX_VERSION")
    ms = (probes.clock() - started) * 1000
    note = " (no GPU to test)" if recipe is not None and recipe.hardware.accelerator == "cuda" and device == "cpu" \
        else ""
    return Check("device-step", PASS, f"forward/backward on {device} in {ms:.1f} ms{note}")


# --------------------------------------------------------------------------------------------------------- recipe


def _hub_check(name: str, what: str, repo: str, revision: str | None, probes: Probes, network: bool,
               timeout: float) -> Check:
    rev = f"@{revision}" if revision else ""
    cached = probes.hub_cached(repo, revision)
    if cached:
        return Check(name, PASS, f"{what} {repo}{rev} is in the local hub cache (commit {cached[:12]})")
    if not network:
        return Check(name, WARN, f"{what} {repo}{rev} is not in the local hub cache and network checks are off",
                     f"download it where there is network (`hf download {repo}`), or drop --offline")
    done, error = _with_timeout(lambda: probes.hub_reachable(repo, revision, timeout), timeout)
    if done and error is None:
        return Check(name, PASS, f"{what} {repo}{rev} is reachable on the hub ({DOWNLOADS})")
    why = _short(error) if error is not None else f"no answer in {timeout:g} s"
    status = FAIL if error is not None and type(error).__name__ in ("RepositoryNotFoundError", "GatedRepoError",
                                                                    "RevisionNotFoundError") else WARN
    return Check(name, status, f"{what} {repo}{rev}: not cached and the hub is not reachable ({why})",
                 f"connect, or fill the cache first (`hf download {repo}`), or a local folder")


def check_model(recipe: Recipe, probes: Probes, network: bool, timeout: float) -> list[Check]:
    """The architecture's base and the Round-1 model (`init_from`): a tiny model, a local folder, or a hub id."""
    m = recipe.model
    checks = []
    if m.tiny:
        checks.append(Check("model", PASS, f"tiny-{m.tiny} {m.family}: random weights built here, nothing to "
                                           "download"))
    elif is_local_path(m.name_or_path):
        ok = Path(m.name_or_path).expanduser().is_dir()
        checks.append(Check("model", PASS if ok else FAIL, f"local folder {m.name_or_path} "
                            + ("exists" if ok else "does not exist"), "" if ok else "fix model.name_or_path"))
    else:
        checks.append(_hub_check("model", "model", m.name_or_path, m.revision, probes, network, timeout))
    if m.init_from:
        if is_local_path(m.init_from) or Path(m.init_from).exists():
            ok = Path(m.init_from).expanduser().is_dir()
            checks.append(Check("init-from", PASS if ok else FAIL, f"Round-1 model {m.init_from} "
                                + ("exists" if ok else "does not exist here"),
                                "" if ok else "fix model.init_from (a run, export or model folder, or a hub id)"))
        else:  # "org/name" that is no folder here: a hub id, or a folder missing from this machine
            check = _hub_check("init-from", "Round-1 model", m.init_from, m.init_revision, probes, network, timeout)
            if check.status != PASS:
                check = replace(check, reason=f"no local folder {m.init_from} here; as a hub id: {check.reason}",
                                fix=f"copy the Round-1 folder to {m.init_from}, or {check.fix}")
            checks.append(check)
    return checks


def check_data(recipe: Recipe, probes: Probes) -> Check:
    """The manifests exist; their audio's size is said (it is on disk already)."""
    d = recipe.data
    if not d.train_manifest:
        return Check("data", FAIL, "data.train_manifest is not set", "data.train_manifest=PATH (caspi import)")
    missing = [p for p in (d.train_manifest, d.eval_manifest) if p and not Path(p).is_file()]
    if missing:
        return Check("data", FAIL, f"manifest not found: {', '.join(missing)}",
                     "run `caspi import` (or `caspi synth`, `caspi audit`) first, or fix data.*_manifest")
    try:
        size = sum(probes.audio_bytes(p) for p in (d.train_manifest, d.eval_manifest) if p)
    except (CaspiError, OSError) as exc:
        return Check("data", FAIL, _short(exc), "re-run `caspi import`")
    note = "" if d.eval_manifest else "; no eval manifest: no WER during training"
    return Check("data", PASS if d.eval_manifest else WARN,
                 f"{d.train_manifest}{' and ' + d.eval_manifest if d.eval_manifest else ''}: "
                 f"{size / GiB:.2f} GiB of audio{note}", "" if d.eval_manifest else "data.eval_manifest=PATH")


def check_phase0(recipe: Recipe) -> Check:
    """`caspi.audit.gate.check_gate`, exactly as `caspi train` calls it (without --force-gate)."""
    if not recipe.gate.report:
        return Check("phase0", WARN, "gate.report is not set: training starts without a Phase 0 audit",
                     "caspi audit --manifest ... --out phase0, then gate.report=phase0/alignment_report.json")
    try:
        record = check_gate(recipe.gate.report, recipe.data.train_manifest or "", force=False)
    except CaspiError as exc:
        return Check("phase0", FAIL, str(exc).splitlines()[0], "re-run `caspi audit` on data.train_manifest")
    reason = (f"{record.report}: {record.decision}, {record.low_quality_percentage:.1f} % low-quality, "
              "made from this manifest")
    if record.decision == CAUTION:
        return Check("phase0", WARN, reason, "look at the flagged samples (caspi report) before paying for the run")
    return Check("phase0", PASS, reason)


def check_memory(recipe: Recipe, probes: Probes) -> Check:
    """caspi.plan's memory per device per phase against the GPU here (else the recipe's gpu_memory_gib; on CPU the
    machine's RAM)."""
    facts = probes.torch()
    if recipe.hardware.accelerator == "cpu":
        limit, where = probes.ram_gib(), "RAM"
    elif facts.gpus:
        limit, where = min(g.memory_gib for g in facts.gpus), "this GPU"
    else:
        limit, where = recipe.hardware.gpu_memory_gib, "hardware.gpu_memory_gib"
    try:
        plans = probes.memory(recipe, limit)
    except Exception as exc:  # noqa: BLE001 - a plan that cannot be made is this check's finding, not a crash
        return Check("memory", FAIL, f"no memory plan: {_short(exc)}", "caspi validate-recipe the recipe")
    parts = [f"{name} {plan.total_gib:.1f} GiB" for name, plan in plans]
    worst_name, worst = max(plans, key=lambda item: item[1].total_bytes)
    head = f"peak {worst.total_gib:.1f} GiB per device ({', '.join(parts)})"
    if limit is None or worst.fits is None:
        return Check("memory", WARN, f"{head}; no memory size to compare with",
                     "set hardware.gpu_memory_gib (or run doctor on the GPU machine)")
    if worst.fits:
        return Check("memory", PASS, f"{head}; fits {where} ({limit:.1f} GiB), margin {worst.margin_gib:.1f} GiB")
    largest = worst.largest_micro_batch
    other = getattr(worst, "other", None)  # the same plan with gradient checkpointing the other way
    if largest:
        fix = f"train.micro_batch={largest} (the effective batch is kept by accumulation)"
    elif other is not None and other.fits and other.gradient_checkpointing:
        fix = "train.gradient_checkpointing=true"
    else:
        fix = "more GPUs, LoRA, train.gradient_checkpointing=true or fewer trained layers"
    if recipe.hardware.accelerator == "cpu":  # the OS swaps or kills; a slow start rather than a certain failure
        return Check("memory", WARN, f"{head}; more than {where} ({limit:.1f} GiB) in phase {worst_name}", fix)
    return Check("memory", FAIL, f"{head}; does not fit {where} ({limit:.1f} GiB) in phase {worst_name}", fix)


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the run folder need not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_needs(recipe: Recipe, probes: Probes, out: Path) -> dict[str, int]:
    """Bytes the run writes into its folder, by what: the base copy, checkpoints at their peak, the final model."""
    total, trained = probes.model_sizes(recipe)
    dtype_bytes = DTYPE_BYTES[recipe.model.dtype]
    needs = {}
    # RUN/base: the tiny model's random weights, or a local init_from's copy (caspi.train.loop).
    if recipe.model.tiny:
        needs["base"] = total * 4
    elif recipe.model.init_from and Path(recipe.model.init_from).is_dir():
        needs["base"] = probes.folder_bytes(Path(recipe.model.init_from))
    # keep_last + the best by WER, + the new one written before the oldest is pruned (caspi.train.checkpoint).
    needs["checkpoints"] = (recipe.train.keep_last + 2) * trained * CHECKPOINT_BYTES_PER_PARAM
    needs["final"] = total * dtype_bytes  # RUN/final: the merged model in the model's dtype
    return needs


def check_disk(probes: Probes, out: Path, recipe: Recipe | None, network_cache_needed: bool = False) -> list[Check]:
    """Free space where the run writes (and, when the model still has to be downloaded, in the hub cache)."""
    where = _existing(out)
    try:
        free = probes.disk_usage(str(where)).free
    except OSError as exc:
        return [Check("disk", FAIL, f"cannot read free space at {where}: {_short(exc)}", "check --out")]
    if recipe is None:
        return [Check("disk", PASS, f"{free / GiB:.1f} GiB free at {where}")]
    try:
        needs = disk_needs(recipe, probes, out)
    except Exception as exc:  # noqa: BLE001 - the free space is still worth saying
        return [Check("disk", WARN, f"{free / GiB:.1f} GiB free at {where}; the run's size is unknown "
                                    f"({_short(exc)})", "")]
    need = sum(needs.values())
    terms = ", ".join(f"{k} {v / GiB:.2f}" for k, v in needs.items())
    reason = f"{free / GiB:.1f} GiB free at {where}, the run writes {need / GiB:.2f} GiB ({terms})"
    checks = []
    if free < need:
        checks.append(Check("disk", FAIL, reason, f"free {(need - free) / GiB:.1f} GiB, fewer train.keep_last, or "
                                                  "another --out"))
    elif free < need * DISK_MARGIN:
        checks.append(Check("disk", WARN, reason + f"; under a {DISK_MARGIN - 1:.0%} margin",
                            "free some space or lower train.keep_last"))
    else:
        checks.append(Check("disk", PASS, reason))
    if network_cache_needed:
        cache = _existing(Path(probes.hub_cache()))
        total, _ = probes.model_sizes(recipe)
        download = total * DTYPE_BYTES[recipe.model.dtype]
        cache_free = probes.disk_usage(str(cache)).free
        status = PASS if cache_free >= download else FAIL
        checks.append(Check("disk-cache", status, f"{cache_free / GiB:.1f} GiB free in the hub cache {cache}, the "
                                                  f"model download is about {download / GiB:.2f} GiB",
                            "" if status == PASS else "free space there, or set HF_HOME to a larger disk"))
    return checks


def check_wandb(probes: Probes, environ: Mapping[str, str]) -> Check:
    """tracking.wandb needs the package, and a login or offline mode (else wandb.init prompts or fails)."""
    if probes.version("wandb") is None:
        return Check("wandb", FAIL, "tracking.wandb is on but wandb is not installed",
                     "pip install 'caspi[wandb]', or tracking.wandb=false")
    mode = environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return Check("wandb", PASS, f"WANDB_MODE={mode}: runs stay under RUN/wandb (`wandb sync` uploads them)")
    source = probes.wandb_key(environ)
    if source:
        return Check("wandb", PASS, f"logged in ({source}; key not shown)")
    return Check("wandb", FAIL, "tracking.wandb is on, no W&B login and WANDB_MODE is not offline",
                 "`wandb login`, or export WANDB_MODE=offline, or tracking.wandb=false")


# --------------------------------------------------------------------------------------------------------- all


def run_checks(recipe: Recipe | None = None, *, environ: Mapping[str, str] | None = None, out: str | Path = ".",
               network: bool = True, timeout: float = 5.0, probes: Probes | None = None) -> list[Check]:
    """Every check, in the order a person would fix them. `out`: the run folder (free space is measured there);
    `network`: whether to ask the hub about models not in the local cache (never longer than `timeout` seconds);
    HF_HUB_OFFLINE=1 in `environ` turns it off too."""
    environ = os.environ if environ is None else environ
    probes = probes or Probes()
    facts = probes.torch()  # once: it imports torch and may run nvidia-smi
    probes = replace(probes, torch=lambda: facts)
    network = network and environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on")
    checks = [check_python(probes), check_packages(probes), check_torch(probes, environ), check_gpu(probes, recipe),
              check_alloc_conf(probes, environ, recipe)]
    models: list[Check] = []
    if recipe is not None:
        models = check_model(recipe, probes, network, timeout)
    downloading = any(DOWNLOADS in c.reason for c in models if c.name == "model")
    checks += check_disk(probes, Path(out), recipe, network_cache_needed=downloading)
    checks += [check_hub(probes, network, timeout), check_hf_token(probes, environ)]
    if recipe is not None:
        checks += models
        checks.append(check_data(recipe, probes))
        checks.append(check_phase0(recipe))
        checks.append(check_memory(recipe, probes))
        if recipe.tracking.wandb:
            checks.append(check_wandb(probes, environ))
    checks.append(check_espeak(probes))
    checks.append(check_device_step(probes, recipe))
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 when any check FAILs, else 0 (WARNs do not stop a run)."""
    return EXIT_FAIL if any(c.status == FAIL for c in checks) else EXIT_OK


def render_checks(checks: list[Check]) -> str:
    """One line a check (`PASS  torch        2.13.0 (CPU build)`), its fix indented below, and a verdict."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status}  {c.name:<{width}}  {c.reason}")
        if c.fix and c.status != PASS:
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    verdict = "not ready" if counts[FAIL] else "ready" + (" (with warnings)" if counts[WARN] else "")
    lines.append(f"{verdict}: {counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines)


def checks_json(checks: list[Check]) -> str:
    """The checks for CI: {"ok": bool, "checks": [{name, status, reason, fix}, ...]}."""
    return json.dumps({"ok": exit_code(checks) == EXIT_OK, "checks": [c.to_dict() for c in checks]},
                      ensure_ascii=False, indent=2)


__all__ = ["Check", "Gpu", "Probes", "TorchFacts", "run_checks", "render_checks", "checks_json", "exit_code",
           "tiny_step", "torch_facts", "PASS", "WARN", "FAIL"]
