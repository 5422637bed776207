"""caspi.doctor: each check made to PASS and to FAIL (or WARN) through injected probes, with no GPU and no network;
then the probes that read real files (token, netrc, manifest sizes), the real tiny step on the CPU, and the CLI."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from caspi import doctor
from caspi.audit.gate import file_sha256
from caspi.config import load_recipe
from caspi.data.cuts import make_cut, write_manifest
from caspi.doctor import FAIL, PASS, WARN, Check, Gpu, Probes, TorchFacts
from caspi.errors import ConfigError, DependencyError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GiB = 2**30
PINS = [
    "torch>=2.6,<2.15", "transformers>=5.23,<6", "peft>=0.21,<1", "lhotse>=1.33,<2", "jiwer>=4,<5",
    "soundfile>=0.12", "soxr>=0.5", "numpy>=1.26", "pytest>=8; extra == 'dev'", "wandb>=0.19; extra == 'wandb'",
]
GOOD_VERSIONS = {"transformers": "5.24.0", "peft": "0.21.0", "lhotse": "1.33.1", "jiwer": "4.0.0",
                 "soundfile": "0.13.1", "soxr": "0.5.0", "wandb": "0.31.0"}
A100 = Gpu("NVIDIA A100-SXM4-40GB", 39.4)  # what a 40 GB card reports
CUDA_2XA100 = TorchFacts("2.13.0+cu128", "12.8", None, (A100, A100), "570.86")
CPU_ONLY = TorchFacts("2.13.0+cpu", None, None)


@dataclass
class FakeMemory:
    """The fields of caspi.plan's MemoryPlan that doctor reads."""

    total_bytes: int
    fits: bool | None
    margin_gib: float
    largest_micro_batch: int | None

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB


def probes(**changes) -> Probes:
    """Probes of a ready 2 × A100 machine: every check passes; `changes` replaces some."""
    base = Probes(
        torch=lambda: CUDA_2XA100,
        version=GOOD_VERSIONS.get,
        requirements=lambda: (">=3.11", PINS),
        python=lambda: "3.11.9",
        disk_usage=lambda path: SimpleNamespace(total=1000 * GiB, used=0, free=1000 * GiB),
        hf_token=lambda environ: "HF_TOKEN",
        hub_cached=lambda repo, revision: "0123456789abcdef" * 2 + "01234567",
        hub_reachable=lambda repo, revision, timeout: None,
        wandb_key=lambda environ: "WANDB_API_KEY",
        espeak=lambda: "/usr/bin/espeak-ng",
        step=lambda device: None,
        ram_gib=lambda: 64.0,
        memory=lambda recipe, limit: [("Strategy B", FakeMemory(20 * GiB, True, 19.4, 4)),
                                      ("Strategy A", FakeMemory(30 * GiB, True, 9.4, 2))],
        model_sizes=lambda recipe: (2_000_000_000, 500_000_000),
        folder_bytes=lambda path: 4 * GiB,
        audio_bytes=lambda path: GiB,
        hub_cache=lambda: "/",
        clock=iter(range(0, 10**6)).__next__,
    )
    return replace(base, **changes)


@pytest.fixture
def gpu_recipe(tmp_path, monkeypatch):
    """round2-2xa100 in a folder holding its manifests and a PROCEED report made from the train manifest."""
    monkeypatch.chdir(tmp_path)
    Path("phase0").mkdir()
    Path("data/round2").mkdir(parents=True)
    Path("round1/final").mkdir(parents=True)
    Path("phase0/cleaned.jsonl.gz").write_bytes(b"train cuts")
    Path("data/round2/eval.jsonl.gz").write_bytes(b"eval cuts")
    write_report(Path("phase0/alignment_report.json"), "PROCEED", 4.0, Path("phase0/cleaned.jsonl.gz"))
    return load_recipe(RECIPES / "round2-2xa100.yaml")


def write_report(path: Path, decision: str, pct: float, manifest: Path) -> None:
    path.write_text(json.dumps({"decision": decision, "low_quality_percentage": pct, "low_quality_ci95": [1.0, 2.0],
                                "manifest_sha256": file_sha256(manifest), "total_samples": 500}))


def cpu_recipe(*overrides):
    return load_recipe(RECIPES / "demo-cpu.yaml", list(overrides))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# ------------------------------------------------------------------------------------------------------ machine


@pytest.mark.parametrize("python, status", [("3.11.9", PASS), ("3.13.1", PASS), ("3.10.14", FAIL)])
def test_python_against_requires_python(python, status):
    check = doctor.check_python(probes(python=lambda: python))
    assert check.status == status
    assert python in check.reason and ">=3.11" in check.reason


@pytest.mark.parametrize("versions, status, named", [
    (GOOD_VERSIONS, PASS, None),
    ({**GOOD_VERSIONS, "transformers": "4.57.1"}, FAIL, "transformers 4.57.1 outside <6,>=5.23"),
    ({k: v for k, v in GOOD_VERSIONS.items() if k != "lhotse"}, FAIL, "lhotse not installed"),
])
def test_packages_against_pyproject_pins(versions, status, named):
    check = doctor.check_packages(probes(version=versions.get))
    assert check.status == status
    if named:
        assert named in check.reason
        assert "pip install" in check.fix and "'" in check.fix
    else:
        assert "transformers 5.24.0" in check.reason and "soxr 0.5.0" in check.reason


def test_extras_are_not_required():
    # pytest and wandb are extras: not installed is no problem
    assert "pytest" not in doctor._pins(probes())
    assert set(doctor._pins(probes())) >= {"torch", "transformers", "soxr"}


@pytest.mark.parametrize("facts, status, build", [
    (CUDA_2XA100, PASS, "CUDA 12.8"),
    (CPU_ONLY, PASS, "CPU build"),
    (TorchFacts("2.5.1+rocm6.2", None, "6.2.41133", (Gpu("AMD Radeon RX 5600 XT", 6.0),)), FAIL, "ROCm 6.2"),
])
def test_torch_version_and_build(facts, status, build):
    check = doctor.check_torch(probes(torch=lambda: facts), environ={})
    assert check.status == status
    assert build in check.reason


def test_torch_on_rocm_reports_its_environment():
    rocm = TorchFacts("2.13.0+rocm6.4", None, "6.4.1", (Gpu("AMD Radeon RX 7900 XTX", 24.0),))
    check = doctor.check_torch(probes(torch=lambda: rocm), environ={"HSA_OVERRIDE_GFX_VERSION": "10.3.0"})
    assert check.status == PASS
    assert "ROCm 6.4.1" in check.reason
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in check.reason and "PYTORCH_HIP_ALLOC_CONF=unset" in check.reason


def test_gpu_without_recipe():
    assert doctor.check_gpu(probes(torch=lambda: CPU_ONLY), None).status == WARN
    check = doctor.check_gpu(probes(), None)
    assert check.status == PASS
    assert check.reason == "2 × NVIDIA A100-SXM4-40GB 39.4 GiB, driver 570.86"


@pytest.mark.parametrize("facts, overrides, status, words", [
    (CUDA_2XA100, [], PASS, "2 × NVIDIA A100"),  # 39.4 GiB is within the 5 % tolerance of 40
    (CPU_ONLY, [], FAIL, "hardware.accelerator is cuda but there is no GPU here"),
    (replace(CUDA_2XA100, gpus=(A100,)), [], FAIL, "1 GPU(s) here, the recipe's hardware.gpus_per_node is 2"),
    (replace(CUDA_2XA100, gpus=(Gpu("NVIDIA A10", 22.1),) * 2), [], WARN, "less than hardware.gpu_memory_gib"),
    (CPU_ONLY, ["hardware.accelerator=cpu", "train.precision=fp32"], PASS, "training runs on CPU"),
    (CPU_ONLY, ["hardware.accelerator=cpu", "train.precision=bf16"], PASS, "training runs on CPU"),
    (replace(CPU_ONLY, cpu_bf16=False), ["hardware.accelerator=cpu", "train.precision=bf16"], WARN,
     "this CPU has no native bf16"),
    (replace(CPU_ONLY, cpu_bf16=False), ["hardware.accelerator=cpu", "train.precision=fp32"], PASS,
     "training runs on CPU"),
    (replace(CUDA_2XA100, cpu_bf16=False), ["hardware.accelerator=cpu", "train.precision=bf16"], WARN,
     "this CPU has no native bf16"),
])
def test_gpu_against_the_recipe(gpu_recipe, facts, overrides, status, words):
    recipe = load_recipe(RECIPES / "round2-2xa100.yaml", overrides)
    check = doctor.check_gpu(probes(torch=lambda: facts), recipe)
    assert check.status == status
    assert words in check.reason
    if facts is CPU_ONLY and status == FAIL:
        assert check.fix == "--cpu-fallback or hardware.accelerator=cpu"


def test_gpu_reports_why_torch_sees_none():
    broken = TorchFacts("2.13.0+cu128", "12.8", None, problem="CUDA initialization: The NVIDIA driver is too old")
    check = doctor.check_gpu(probes(torch=lambda: broken), cpu_recipe("hardware.accelerator=cuda"))
    assert check.status == FAIL and "driver is too old" in check.reason


@pytest.mark.parametrize("facts, environ, status", [
    (CUDA_2XA100, {}, WARN),
    (CUDA_2XA100, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:256"}, WARN),
    (CUDA_2XA100, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, PASS),
    (CPU_ONLY, {}, PASS),
])
def test_alloc_conf(facts, environ, status):
    check = doctor.check_alloc_conf(probes(torch=lambda: facts), environ, None)
    assert check.status == status
    if status == WARN:
        assert check.fix == "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"


def test_alloc_conf_on_rocm_names_the_hip_variable():
    rocm = TorchFacts("2.13.0+rocm6.4", None, "6.4.1", (Gpu("AMD Instinct MI300X", 191.5),))
    check = doctor.check_alloc_conf(probes(torch=lambda: rocm), {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
                                    None)
    assert check.status == WARN and check.fix == "export PYTORCH_HIP_ALLOC_CONF=expandable_segments:True"
    ok = doctor.check_alloc_conf(probes(torch=lambda: rocm), {"PYTORCH_HIP_ALLOC_CONF": "expandable_segments:True"},
                                 None)
    assert ok.status == PASS


@pytest.mark.parametrize("network, reach, status, words", [
    (True, None, PASS, "huggingface.co answers"),
    (True, OSError("[Errno -2] Name or service not known"), WARN, "not reachable (OSError: [Errno -2]"),
    (True, "hang", WARN, "no answer in 0.2 s"),
    (False, None, PASS, "not asked"),
])
def test_hub(network, reach, status, words):
    asked = []

    def reachable(repo, revision, timeout):
        asked.append(repo)
        if reach == "hang":
            time.sleep(30)
        elif reach is not None:
            raise reach

    started = time.perf_counter()
    check = doctor.check_hub(probes(hub_reachable=reachable), network, timeout=0.2)
    assert time.perf_counter() - started < 2
    assert check.status == status and words in check.reason
    assert asked == (["Qwen/Qwen3-ASR-1.7B-hf"] if network else [])


@pytest.mark.parametrize("source, status", [("HF_TOKEN", PASS), (None, WARN)])
def test_hf_token(source, status):
    check = doctor.check_hf_token(probes(hf_token=lambda environ: source), {})
    assert check.status == status


def test_hf_token_probe_reads_env_and_token_file_and_never_returns_the_token(tmp_path):
    secret = "hf_SECRETsecretSECRET"
    assert doctor._hf_token({"HF_TOKEN": secret}) == "HF_TOKEN"
    assert doctor._hf_token({"HF_HOME": str(tmp_path)}) is None
    (tmp_path / "token").write_text(secret + "\n")
    assert doctor._hf_token({"HF_HOME": str(tmp_path)}) == str(tmp_path / "token")
    checks = [doctor.check_hf_token(Probes(), {"HF_TOKEN": secret}),
              doctor.check_hf_token(Probes(), {"HF_HOME": str(tmp_path)})]
    assert all(c.status == PASS for c in checks)
    assert secret not in doctor.render_checks(checks) + doctor.checks_json(checks)


def test_espeak():
    assert doctor.check_espeak(probes()).status == PASS

    def missing():
        raise DependencyError("espeak-ng not found on PATH")

    check = doctor.check_espeak(probes(espeak=missing))
    assert check.status == WARN and "espeak-ng not found" in check.reason and "apt-get install espeak-ng" in check.fix


@pytest.mark.parametrize("facts, recipe_overrides, fails, status, device", [
    (CUDA_2XA100, None, False, PASS, "cuda"),
    (CUDA_2XA100, None, True, WARN, "cuda"),  # the GPU fails: a WARN with the CPU fallback
    (CPU_ONLY, None, False, PASS, "cpu"),
    (CPU_ONLY, None, True, FAIL, "cpu"),  # nothing to fall back to
    (CUDA_2XA100, ["hardware.accelerator=cpu"], False, PASS, "cpu"),  # the recipe's device, not the best one
])
def test_device_step(facts, recipe_overrides, fails, status, device):
    seen = []

    def step(dev):
        seen.append(dev)
        if fails:
            raise RuntimeError("HIP error: HSA_STATUS_ERROR_MEMORY_APERTURE_VIOLATION")

    recipe = cpu_recipe(*recipe_overrides) if recipe_overrides else None
    check = doctor.check_device_step(probes(torch=lambda: facts, step=step), recipe)
    assert seen == [device] * (1 if fails else 2)  # a warm-up call, then the timed one
    assert check.status == status
    if status == PASS:
        assert f"forward/backward on {device} in 1000.0 ms" in check.reason  # one tick of the fake clock
    if status == WARN:
        assert "--cpu-fallback" in check.fix and "APERTURE_VIOLATION" in check.reason


def test_tiny_step_runs_on_the_cpu():
    started = time.perf_counter()
    doctor.tiny_step("cpu")
    assert time.perf_counter() - started < 5


def test_torch_facts_of_this_machine():
    import torch

    facts = doctor.torch_facts()
    assert facts.version == torch.__version__ and facts.cuda == torch.version.cuda
    assert len(facts.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


# ------------------------------------------------------------------------------------------------------ disk


def test_disk_needs_count_checkpoints_base_and_final(gpu_recipe):
    needs = doctor.disk_needs(gpu_recipe, probes(), Path("run"))
    # keep_last 3 + best + the one being written, each 500 M trained parameters × (fp32 master + 2 AdamW moments)
    assert needs["checkpoints"] == 5 * 500_000_000 * 12
    assert needs["final"] == 2_000_000_000 * 2  # bfloat16
    assert needs["base"] == 4 * GiB  # init_from round1/final is a local folder: copied into RUN/base
    tiny = doctor.disk_needs(cpu_recipe(), probes(model_sizes=lambda r: (1000, 1000)), Path("run"))
    assert tiny == {"base": 4000, "checkpoints": 4 * 1000 * 12, "final": 4000}


@pytest.mark.parametrize("free_gib, status", [(1000, PASS), (39, WARN), (20, FAIL)])
def test_disk_against_what_the_run_writes(gpu_recipe, free_gib, status):
    # the run writes 4 GiB base + 30e9 B checkpoints + 4e9 B final = 38.29e9 B = 35.66 GiB
    usage = probes(disk_usage=lambda path: SimpleNamespace(total=2000 * GiB, used=0, free=free_gib * GiB))
    [check] = doctor.check_disk(usage, Path("run"), gpu_recipe)
    assert check.status == status
    assert "the run writes 35.66 GiB (base 4.00, checkpoints 27.94, final 3.73)" in check.reason


def test_disk_without_recipe_and_unreadable(tmp_path):
    [check] = doctor.check_disk(probes(), tmp_path / "not" / "yet", None)
    assert check.status == PASS and f"1000.0 GiB free at {tmp_path}" in check.reason

    def broken(path):
        raise PermissionError("denied")

    [check] = doctor.check_disk(probes(disk_usage=broken), tmp_path, None)
    assert check.status == FAIL


def test_disk_checks_the_hub_cache_when_the_model_must_be_downloaded(gpu_recipe):
    small = probes(disk_usage=lambda path: SimpleNamespace(total=0, used=0, free=(3 if path == "/" else 100) * GiB))
    checks = doctor.check_disk(small, Path("run"), gpu_recipe, network_cache_needed=True)
    assert [c.status for c in checks] == [PASS, FAIL]  # 4 GB of bf16 weights do not fit 3 GiB
    assert "model download is about 3.73 GiB" in checks[1].reason


# ------------------------------------------------------------------------------------------------------ recipe


def test_model_tiny_needs_nothing():
    [check] = doctor.check_model(cpu_recipe(), probes(hub_cached=lambda *a: None), network=False, timeout=1)
    assert check.status == PASS and "tiny-s" in check.reason


@pytest.mark.parametrize("cached, network, reach, status, words", [
    ("f" * 40, False, None, PASS, "in the local hub cache (commit ffffffffffff)"),
    (None, True, None, PASS, "reachable on the hub"),
    (None, False, None, WARN, "network checks are off"),
    (None, True, ConnectionError("Name or service not known"), WARN, "hub is not reachable (ConnectionError"),
    (None, True, type("RepositoryNotFoundError", (Exception,), {})("404"), FAIL, "RepositoryNotFoundError"),
])
def test_model_on_the_hub(gpu_recipe, cached, network, reach, status, words):
    def reachable(repo, revision, timeout):
        if reach is not None:
            raise reach

    checks = by_name(doctor.check_model(gpu_recipe, probes(hub_cached=lambda repo, rev: cached,
                                                           hub_reachable=reachable), network=network, timeout=1))
    assert checks["model"].status == status
    assert "Qwen/Qwen3-ASR-1.7B-hf" in checks["model"].reason and words in checks["model"].reason
    assert checks["init-from"].status == PASS  # round1/final exists in the fixture's folder


def test_a_hanging_hub_is_a_warn_after_the_timeout(gpu_recipe):
    started = time.perf_counter()
    checks = by_name(doctor.check_model(gpu_recipe, probes(hub_cached=lambda *a: None,
                                                           hub_reachable=lambda *a: time.sleep(30)),
                                        network=True, timeout=0.2))
    assert time.perf_counter() - started < 2
    assert checks["model"].status == WARN and "no answer in 0.2 s" in checks["model"].reason


def test_hf_hub_offline_turns_network_checks_off(gpu_recipe):
    asked = []
    checks = by_name(doctor.run_checks(gpu_recipe, environ={"HF_HUB_OFFLINE": "1"},
                                       probes=probes(hub_cached=lambda *a: None,
                                                     hub_reachable=lambda *a: asked.append(a))))
    assert asked == [] and checks["model"].status == WARN


def test_init_from_that_is_neither_a_folder_nor_cached(gpu_recipe):
    Path("round1/final").rmdir()
    checks = by_name(doctor.check_model(gpu_recipe, probes(hub_cached=lambda *a: None), network=False, timeout=1))
    assert checks["init-from"].status == WARN
    assert checks["init-from"].reason.startswith("no local folder round1/final here; as a hub id: Round-1 model")
    assert checks["init-from"].fix.startswith("copy the Round-1 folder to round1/final, or ")


def test_local_model_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(RECIPES / "round2-2xa100.yaml", ["model.init_from=./round1/final"])
    assert by_name(doctor.check_model(recipe, probes(), False, 1))["init-from"].status == FAIL
    Path("round1/final").mkdir(parents=True)
    assert by_name(doctor.check_model(recipe, probes(), False, 1))["init-from"].status == PASS


def test_data(gpu_recipe, tmp_path):
    assert doctor.check_data(gpu_recipe, probes()).status == PASS
    assert doctor.check_data(gpu_recipe.model_copy(update={"data": gpu_recipe.data.model_copy(
        update={"eval_manifest": None})}), probes()).status == WARN
    Path("data/round2/eval.jsonl.gz").unlink()
    check = doctor.check_data(gpu_recipe, probes())
    assert check.status == FAIL and "data/round2/eval.jsonl.gz" in check.reason
    assert doctor.check_data(load_recipe(RECIPES / "round2-2xa100.yaml", ["data.train_manifest=null"]),
                             probes()).status == FAIL


def test_manifest_audio_bytes_counts_each_file_once(tmp_path):
    (tmp_path / "a.flac").write_bytes(b"x" * 1000)
    (tmp_path / "b.flac").write_bytes(b"x" * 3000)
    cuts = [make_cut("a", tmp_path / "a.flac", 16000, "שלום"), make_cut("b", tmp_path / "b.flac", 16000, "שלום"),
            make_cut("a2", tmp_path / "a.flac", 16000, "שלום")]
    from lhotse import CutSet

    manifest = write_manifest(CutSet.from_cuts(cuts), tmp_path / "m.jsonl.gz")
    assert doctor._manifest_audio_bytes(str(manifest)) == 4000


@pytest.mark.parametrize("decision, pct, same_manifest, status, words", [
    ("PROCEED", 4.0, True, PASS, "PROCEED, 4.0 % low-quality"),
    ("CAUTION", 12.0, True, WARN, "CAUTION, 12.0 %"),
    ("STOP", 22.0, True, FAIL, "Phase 0 says STOP: 22.0 %"),
    ("PROCEED", 4.0, False, FAIL, "made from another manifest"),
])
def test_phase0_is_the_training_gate(gpu_recipe, decision, pct, same_manifest, status, words):
    other = Path("other.jsonl.gz")
    other.write_bytes(b"other cuts")
    write_report(Path("phase0/alignment_report.json"), decision, pct,
                 Path("phase0/cleaned.jsonl.gz") if same_manifest else other)
    check = doctor.check_phase0(gpu_recipe)
    assert check.status == status
    assert words in check.reason


def test_phase0_without_report_or_gate(gpu_recipe):
    Path("phase0/alignment_report.json").unlink()
    check = doctor.check_phase0(gpu_recipe)
    assert check.status == FAIL and "Phase 0 report not found" in check.reason
    assert doctor.check_phase0(cpu_recipe()).status == WARN  # gate.report: null


def test_memory(gpu_recipe):
    limits = []

    def memory(recipe, limit):
        limits.append(limit)
        return [("Strategy B", FakeMemory(20 * GiB, True, 19.4, 4)), ("Strategy A", FakeMemory(30 * GiB, True, 9.4, 2))]

    check = doctor.check_memory(gpu_recipe, probes(memory=memory))
    assert check.status == PASS
    assert check.reason == ("peak 30.0 GiB per device (Strategy B 20.0 GiB, Strategy A 30.0 GiB); fits this GPU "
                            "(39.4 GiB), margin 9.4 GiB")
    assert limits == [39.4]  # the GPU here, not the recipe's nominal 40


@pytest.mark.parametrize("accelerator, facts, plan, status, fix", [
    ("cuda", CUDA_2XA100, FakeMemory(45 * GiB, False, -5.6, 1), FAIL, "train.micro_batch=1"),
    ("cuda", CUDA_2XA100, FakeMemory(45 * GiB, False, -5.6, None), FAIL, "more GPUs"),
    ("cuda", CPU_ONLY, FakeMemory(30 * GiB, None, 0.0, None), WARN, "set hardware.gpu_memory_gib"),
    ("cpu", CPU_ONLY, FakeMemory(80 * GiB, False, -16.0, 4), WARN, "train.micro_batch=4"),
])
def test_memory_does_not_fit(gpu_recipe, accelerator, facts, plan, status, fix):
    recipe = load_recipe(RECIPES / "round2-2xa100.yaml", [f"hardware.accelerator={accelerator}"])
    check = doctor.check_memory(recipe, probes(torch=lambda: facts, memory=lambda r, limit: [("A", plan)]))
    assert check.status == status
    assert fix in check.fix


def test_memory_without_a_plan(gpu_recipe):
    def broken(recipe, limit):
        raise ConfigError("model.name_or_path: 'org/unknown' is not a checkpoint the plan knows offline")

    check = doctor.check_memory(gpu_recipe, probes(memory=broken))
    assert check.status == FAIL and "org/unknown" in check.reason


@pytest.mark.parametrize("installed, environ, key, status", [
    (True, {}, "WANDB_API_KEY", PASS),
    (True, {"WANDB_MODE": "offline"}, None, PASS),
    (True, {}, None, FAIL),
    (False, {"WANDB_MODE": "offline"}, "WANDB_API_KEY", FAIL),
])
def test_wandb(installed, environ, key, status):
    versions = GOOD_VERSIONS if installed else {k: v for k, v in GOOD_VERSIONS.items() if k != "wandb"}
    check = doctor.check_wandb(probes(version=versions.get, wandb_key=lambda env: key), environ)
    assert check.status == status


def test_wandb_key_probe_reads_netrc(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert doctor._wandb_key({"NETRC": str(netrc)}) == str(netrc)
    assert doctor._wandb_key({"NETRC": str(tmp_path / "none")}) is None
    assert doctor._wandb_key({"WANDB_API_KEY": "k"}) == "WANDB_API_KEY"


# ------------------------------------------------------------------------------------------------------ all


MACHINE = ["python", "packages", "torch", "gpu", "alloc-conf", "disk", "hub", "hf-token", "espeak-ng",
           "device-step"]


def test_run_checks_without_recipe_checks_the_machine_only():
    checks = doctor.run_checks(None, environ={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
                               probes=probes())
    assert [c.name for c in checks] == MACHINE
    assert all(c.status == PASS for c in checks), doctor.render_checks(checks)
    assert doctor.exit_code(checks) == 0


def test_run_checks_with_recipe(gpu_recipe):
    environ = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    checks = doctor.run_checks(gpu_recipe.model_copy(update={"tracking": gpu_recipe.tracking.model_copy(
        update={"wandb": True})}), environ=environ, probes=probes())
    assert [c.name for c in checks] == ["python", "packages", "torch", "gpu", "alloc-conf", "disk", "hub",
                                        "hf-token", "model", "init-from", "data", "phase0", "memory", "wandb",
                                        "espeak-ng", "device-step"]
    assert all(c.status == PASS for c in checks), doctor.render_checks(checks)
    failing = doctor.run_checks(gpu_recipe, environ=environ, probes=probes(torch=lambda: CPU_ONLY))
    assert by_name(failing)["gpu"].status == FAIL and doctor.exit_code(failing) == 1


def test_render_and_json():
    checks = [Check("torch", PASS, "2.13.0 (CPU build)"), Check("gpu", WARN, "no GPU", "install a CUDA build"),
              Check("disk", FAIL, "2.0 GiB free", "free 3 GiB")]
    assert doctor.render_checks(checks).splitlines() == [
        "PASS  torch  2.13.0 (CPU build)",
        "WARN  gpu    no GPU",
        "             fix: install a CUDA build",
        "FAIL  disk   2.0 GiB free",
        "             fix: free 3 GiB",
        "not ready: 1 pass, 1 warn, 1 fail",
    ]
    data = json.loads(doctor.checks_json(checks))
    assert data["ok"] is False and data["checks"][2] == {"name": "disk", "status": "FAIL", "reason": "2.0 GiB free",
                                                         "fix": "free 3 GiB"}
    assert doctor.exit_code(checks[:2]) == 0


def test_cli_doctor_on_this_machine(capsys, tmp_path):
    from caspi.cli import main

    code = main(["doctor", "--json", "--offline", "--out", str(tmp_path)])
    data = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in data["checks"]] == MACHINE
    assert code == (0 if data["ok"] else 1)
    assert by_name([Check(**c) for c in data["checks"]])["device-step"].status in (PASS, WARN)
