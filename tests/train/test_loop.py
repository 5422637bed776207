"""The training loop on a tiny Qwen3-ASR through the real CLI: golden losses, exact resume after a preemption in the
middle of a gradient accumulation, phase switch, checkpoints, NaN/OOM handling, the gate, export."""

from __future__ import annotations

import hashlib
import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from caspi.cli import main
from caspi.config import load_recipe
from caspi.train import checkpoint as ckpt
from caspi.train import loop, resources
from caspi.models.ctc import CtcHead
from caspi.models.loading import load_run

# Optimizer steps of the Whisper learning test (one 4-clip batch per epoch). Measured on 2 busy cores with the
# tiny "xs" Whisper at lr 1e-2: 150 steps take the loss from 7.5 to 0.017 and the CER to 0.0; 100 steps leave CER
# 0.63 (the cosine decay ends before the four clips are told apart).
EPOCHS_WHISPER = 150


def train_cli(recipe, out, *extra) -> int:
    return main(["train", "--recipe", str(recipe), "--out", str(out), "--quiet", *extra])


def test_golden_losses_through_the_cli(make_recipe, read_run, golden_losses, tmp_path, capsys):
    recipe = make_recipe()
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=6") == 0
    out = capsys.readouterr()
    losses = [loss for _, loss in read_run.losses(tmp_path / "run")]
    assert losses == pytest.approx(golden_losses, rel=1e-4), losses
    assert "trained 6 steps" in out.out
    assert "Starting with B (phase 1 of 2, epoch 1, step 0)" in out.err
    assert "Switching to A (phase 2 of 2, epoch 2, step 5)" in out.err and "audio_top" in out.err  # 5 steps/epoch


def test_exact_resume_after_preemption_mid_accumulation(reference_run, read_run, tmp_path, monkeypatch,
                                                        single_thread):
    recipe_path, ref_dir, reference = reference_run
    recipe = load_recipe(recipe_path)
    assert not reference.preempted and reference.step == 10  # both phases ran

    # 9 micro-batches per epoch, accumulation 2: epoch 1 is steps 1-5 (the 5th has one micro-batch), epoch 2 starts
    # with micro-batches 10-11 (step 6). Preempt after micro-batch 12, the first half of step 7, so the checkpoint
    # must carry partial gradients. The flag is what the SIGTERM handler sets.
    calls = {"n": 0}
    original = loop.TrainingRun._forward_backward

    def counting(self, batch, sync):
        result = original(self, batch, sync)
        calls["n"] += 1
        if calls["n"] == 12:
            self.preempt.signal = signal.SIGTERM
        return result

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", counting)
    stopped = loop.train(recipe, tmp_path / "cut", progress=False)
    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", original)
    assert stopped.preempted and stopped.step == 6
    saved = ckpt.find_latest(tmp_path / "cut" / "checkpoints")
    assert saved.name == "step-000006-m01"
    assert torch.load(saved / "rank-0.pt", weights_only=False)["grads"]  # partial gradients were saved

    resumed = loop.train(recipe, tmp_path / "cut", progress=False)
    assert resumed.step == reference.step
    assert read_run.losses(tmp_path / "cut") == read_run.losses(ref_dir)  # exactly equal
    assert read_run.evals(tmp_path / "cut") == read_run.evals(ref_dir)
    ref_w = load_file(ref_dir / "checkpoints" / ckpt.checkpoint_name(reference.step) / ckpt.WEIGHTS_FILE)
    cut_w = load_file(tmp_path / "cut" / "checkpoints" / ckpt.checkpoint_name(resumed.step) / ckpt.WEIGHTS_FILE)
    assert ref_w.keys() == cut_w.keys() and all(torch.equal(ref_w[k], cut_w[k]) for k in ref_w)


def test_phase_switch_unfreezes_the_top_audio_layer(reference_run, read_run):
    _, run, _ = reference_run
    events = [e for e in read_run.events(run) if e["event"] == "phase"]
    assert len(events) == 1 and "phase A at epoch 2" in events[0]["message"]
    phases = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            phases.setdefault(r["phase"], []).append(r)
    assert set(phases) == {"B", "A"}
    assert "lr/audio_top" not in phases["B"][0] and phases["A"][0]["lr/audio_top"] > 0
    # Each phase warms up again from its own start: the first A step is at 1/warmup of its peak.
    assert phases["A"][0]["lr/audio_top"] == pytest.approx(1e-3 / 2)

    base = dict(load_run(run)[0].named_parameters())
    final = load_file(ckpt.find_latest(run / "checkpoints") / ckpt.WEIGHTS_FILE)
    audio = [n for n in final if "audio_tower.layers.1." in n]
    assert audio and not any("audio_tower.layers.0." in n for n in final)  # only the top audio layer trained
    assert all(torch.equal(base[n], final[n]) for n in audio)  # load_run applied them
    state = json.loads((ckpt.find_latest(run / "checkpoints") / ckpt.STATE_FILE).read_text())
    assert state["phase"] == "A" and any("audio_tower" in n for n in state["trained"])


def test_checkpoints_are_pruned_to_last_n_plus_best(reference_run):
    _, run, _ = reference_run
    root = run / "checkpoints"
    names = [p.name for p in ckpt.list_checkpoints(root)]
    state = json.loads((ckpt.find_latest(root) / ckpt.STATE_FILE).read_text())
    best = state["best"][1]
    assert (root / ckpt.LATEST_FILE).read_text().strip() == names[-1]
    assert best in names and len(set(names) - {best}) <= 2  # keep_last 2, plus the best by WER
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert (run / "final" / "config.json").is_file()


def test_resume_refuses_another_recipe(make_recipe, tmp_path, capsys):
    recipe = make_recipe()
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=2") == 0
    capsys.readouterr()
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=2", "train.micro_batch=2") == 1
    err = capsys.readouterr().err
    assert "another recipe" in err and "train.micro_batch" in err


def test_a_run_from_a_caspi_without_newer_recipe_fields_resumes(make_recipe, tmp_path, capsys):
    """A newer Caspi adds recipe fields (model.init_from did); a run started before them must still resume, as long
    as they hold their defaults. Set by the user, they make another recipe."""
    recipe, run = make_recipe(), tmp_path / "run"
    assert train_cli(recipe, run, "train.max_steps=2") == 0
    # Make the run as the older Caspi wrote it: no init_from/init_revision in run.json, its fingerprint without them.
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    for key in ("init_from", "init_revision"):
        del meta["recipe"]["model"][key]
    for key in ("budget_usd", "over_budget"):  # added after init_from (and never part of the fingerprint)
        del meta["recipe"]["hardware"][key]
    old = hashlib.sha256(json.dumps(meta["recipe"], sort_keys=True).encode()).hexdigest()
    meta["fingerprint"] = old
    (run / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    for state_file in (run / "checkpoints").glob("step-*/state.json"):
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["fingerprint"] = old
        state_file.write_text(json.dumps(state), encoding="utf-8")
    capsys.readouterr()
    assert train_cli(recipe, run, "train.max_steps=2") == 0  # resumes from step 2 (checked against `old`)
    err = capsys.readouterr().err
    assert "without the recipe fields model.init_from, model.init_revision" in err and "Resuming from" in err
    assert train_cli(recipe, run, "train.max_steps=2", "model.init_from=elsewhere") == 1  # set by the user
    assert "another recipe" in capsys.readouterr().err


def test_nonfinite_losses_are_skipped_then_stop_the_run(make_recipe, read_run, tmp_path, monkeypatch, capsys):
    original = loop.TrainingRun._forward_backward

    def poisoned(self, batch, sync):
        result = original(self, batch, sync)
        if self.progress.step in (1, 4, 5, 6):  # step 2 is poisoned alone (skipped); 5..7 three in a row (the limit)
            result = result * float("nan")
        return result

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", poisoned)
    assert train_cli(make_recipe(train={"max_bad_steps": 3}), tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "3 optimizer steps in a row had a non-finite loss" in err
    records = [r for r in (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    skipped = [r["step"] for r in records if r["kind"] == "train" and r["skipped"]]
    assert skipped == [2, 5, 6]  # the 3rd of the run stops before it is logged
    assert sum(r["kind"] == "event" and r["event"] == "nonfinite" for r in records) == 4


def test_a_nonfinite_gradient_with_a_finite_loss_skips_the_update(make_recipe, tmp_path, monkeypatch, capsys):
    """The loss is finite but one gradient is infinite (an overflow in backward only): the step must be skipped,
    counted and logged, and the weights left as they were; the next finite step trains again."""
    original_fb, original_step = loop.TrainingRun._forward_backward, loop.TrainingRun._optimizer_step
    poisoned_step = 2  # the optimizer step (1-based) whose gradient is poisoned
    seen = {}

    def poisoned(self, batch, sync):
        result = original_fb(self, batch, sync)
        if self.progress.step + 1 == poisoned_step:
            param = next(p for p in self._trainable_params() if p.grad is not None)
            param.grad[(0,) * param.grad.dim()] = float("inf")  # one element: the loss stays finite
        return result

    def watched(self, step_loss, n_micro):
        params = [p.detach().clone() for p in self._trainable_params()]
        result = original_step(self, step_loss, n_micro)
        unchanged = all(torch.equal(a, b) for a, b in zip(params, self._trainable_params()))
        seen[self.progress.step + 1] = (result.loss, bool(torch.isfinite(step_loss).all()), unchanged,
                                        self.progress.bad_steps)
        return result

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", poisoned)
    monkeypatch.setattr(loop.TrainingRun, "_optimizer_step", watched)
    assert train_cli(make_recipe(train={"max_bad_steps": 3}), tmp_path / "run", "train.max_steps=4") == 0
    assert f"step {poisoned_step}: loss" in capsys.readouterr().err  # the user is told
    loss, finite_loss, unchanged, bad_steps = seen[poisoned_step]
    assert loss is None and finite_loss and unchanged and bad_steps == 1  # skipped and counted
    assert all(seen[s][0] is not None and not seen[s][2] and seen[s][3] == 0 for s in (1, 3, 4))  # others trained
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = {r["step"]: r for r in records if r["kind"] == "train"}
    assert [s for s, r in train_records.items() if r["skipped"]] == [poisoned_step]
    poisoned_record = train_records[poisoned_step]
    # the tracker writes non-finite numbers as strings ("inf"), which JSON has no literal for
    assert math.isfinite(poisoned_record["loss"]) and not math.isfinite(float(poisoned_record["grad_norm"]))
    events = [r for r in records if r["kind"] == "event" and r["event"] == "nonfinite"]
    assert len(events) == 1 and "grad norm inf" in events[0]["message"] and "1 in a row" in events[0]["message"]


def test_oom_halves_the_micro_batch_and_keeps_the_gradient(make_recipe, read_run, tmp_path, monkeypatch, capsys):
    recipe = make_recipe()
    assert train_cli(recipe, tmp_path / "ref", "train.max_steps=4") == 0
    original = loop.TrainingRun._forward_backward
    raised = {"n": 0}

    def oom_once(self, batch, sync):
        if self.progress.step == 1 and self.progress.micro == 2 and self.progress.chunks == 1 and not raised["n"]:
            raised["n"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batch, sync)

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", oom_once)
    capsys.readouterr()
    assert train_cli(recipe, tmp_path / "oom", "train.max_steps=4") == 0
    assert "micro-batch halved" in capsys.readouterr().err
    ref, oom = read_run.losses(tmp_path / "ref"), read_run.losses(tmp_path / "oom")
    assert [s for s, _ in ref] == [s for s, _ in oom]
    assert [x for _, x in oom] == pytest.approx([x for _, x in ref], rel=1e-4)  # same effective batch
    state = json.loads((ckpt.find_latest(tmp_path / "oom" / "checkpoints") / ckpt.STATE_FILE).read_text())
    assert state["chunks"] == 2


def test_oom_with_a_single_clip_stops_with_advice(make_recipe, tmp_path, monkeypatch, capsys):
    def always_oom(self, inputs, sync):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", always_oom)
    assert train_cli(make_recipe(), tmp_path / "run", "train.max_steps=2") == 1
    err = capsys.readouterr().err
    assert err.count("micro-batch halved") == 2  # micro-batch 4 → 2 → 1 clip, then it gives up
    assert "out of memory at step 1 with a micro-batch of one clip" in err


def test_gate_stop_refuses_and_force_gate_is_recorded(make_recipe, train_corpus, tmp_path, capsys):
    from caspi.audit.gate import file_sha256

    report = tmp_path / "alignment_report.json"
    report.write_text(json.dumps({
        "decision": "STOP", "low_quality_percentage": 22.5, "low_quality_ci95": [18.0, 27.4], "total_samples": 400,
        "manifest_sha256": file_sha256(train_corpus / "train.jsonl.gz")}))
    recipe = make_recipe(gate={"report": str(report)})
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=1") == 3
    assert "Phase 0 says STOP: 22.5 %" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=1", "--force-gate") == 0
    gate = json.loads((tmp_path / "run" / "run.json").read_text())["gate"]
    assert gate["forced"] is True and gate["decision"] == "STOP"


def test_cuda_recipe_without_cuda_needs_cpu_fallback(make_recipe, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    recipe = make_recipe(hardware={"accelerator": "cuda"}, train={"precision": "bf16"})
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=1") == 1
    assert "--cpu-fallback" in capsys.readouterr().err
    assert train_cli(recipe, tmp_path / "run2", "train.max_steps=1", "--cpu-fallback") == 0


def test_bf16_weights_train_with_float32_master_copies(make_recipe, read_run, tmp_path):
    recipe = load_recipe(make_recipe(model={"dtype": "bfloat16"}, train={"precision": "bf16", "max_steps": 2}))
    loop.train(recipe, tmp_path / "run", progress=False)
    losses = [x for _, x in read_run.losses(tmp_path / "run")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    weights = load_file(ckpt.find_latest(tmp_path / "run" / "checkpoints") / ckpt.WEIGHTS_FILE)
    assert {t.dtype for t in weights.values()} == {torch.float32}
    exported = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert exported.get("dtype", exported.get("torch_dtype")) == "bfloat16"


def test_bf16_on_cpu_autocasts_over_float32_weights(make_recipe, read_run, tmp_path, capsys, monkeypatch):
    """`train.precision: bf16` on the CPU is mixed precision as on CUDA: the model's linears compute in bf16 (the
    CTC head keeps float32 on purpose), the weights (and so the checkpoint) stay float32. Without native bf16 the
    user is told it is emulated."""
    recipe = load_recipe(make_recipe(train={"precision": "bf16", "max_steps": 2}))
    assert recipe.train.ctc_aux_weight > 0
    assert resources.pick_device(recipe, 0, cpu_fallback=False) == (torch.device("cpu"), torch.float32,
                                                                      torch.bfloat16)
    linears: list[tuple[int, torch.dtype]] = []  # (id of the Linear, its output's dtype) in training forwards
    ctc_linears: set[int] = set()

    def record(module, args, output):
        if torch.is_grad_enabled() and isinstance(module, torch.nn.Linear):
            linears.append((id(module), output.dtype))
        elif isinstance(module, CtcHead):
            ctc_linears.add(id(module.proj))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        loop.train(recipe, tmp_path / "run", progress=False)
    finally:
        handle.remove()
    assert ctc_linears and {d for i, d in linears if i in ctc_linears} == {torch.float32}
    assert {d for i, d in linears if i not in ctc_linears} == {torch.bfloat16}
    losses = [x for _, x in read_run.losses(tmp_path / "run")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    weights = load_file(ckpt.find_latest(tmp_path / "run" / "checkpoints") / ckpt.WEIGHTS_FILE)
    assert {t.dtype for t in weights.values()} == {torch.float32}

    capsys.readouterr()
    monkeypatch.setattr(resources, "cpu_has_native_bf16", lambda: False)
    assert resources.pick_device(recipe, 0, cpu_fallback=False)[2] == torch.bfloat16
    assert "emulated" in capsys.readouterr().err
    fp32 = load_recipe(make_recipe(train={"precision": "fp32"}))
    assert resources.pick_device(fp32, 0, cpu_fallback=False) == (torch.device("cpu"), torch.float32, None)


def test_export_loads_with_from_pretrained_and_decodes_the_same(make_recipe, tmp_path, capsys, train_corpus):
    from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

    from caspi.data.cuts import read_manifest
    from caspi.models.families import get_family

    recipe = make_recipe(lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=3") == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    model = Qwen3ASRForConditionalGeneration.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    assert not any("lora" in n for n, _ in model.named_parameters())  # adapters merged
    family = get_family("qwen3_asr")
    audio = [c.load_audio()[0] for c in list(read_manifest(train_corpus / "eval.jsonl.gz"))[:2]]
    via_run = family.decode(load_run(tmp_path / "run")[0], load_run(tmp_path / "run")[1], audio, max_new_tokens=8)
    via_export = family.decode(model, processor, audio, max_new_tokens=8)
    assert via_export == via_run
    # LoRA adapters were trained on the top LLM layer (not its frozen base weights) in phase B.
    weights = load_file(ckpt.find_latest(tmp_path / "run" / "checkpoints") / ckpt.WEIGHTS_FILE)
    assert any(".lora_A." in n for n in weights) and not any("base_layer" in n for n in weights)


def test_whisper_family_learns_four_clips_through_the_same_loop(train_corpus, make_recipe, read_run, tmp_path):
    """Whisper through the Qwen3-ASR loop (phases, groups, eval): four different sentences memorised from their
    audio. The loss must fall by far more than noise and the decode of the four clips must come close to their
    transcripts; a loop that did not train, or trained only a text prior, could not write four different texts."""
    from caspi.data.cuts import read_manifest, write_manifest

    cuts = read_manifest(train_corpus / "train.jsonl.gz").subset(first=4)
    write_manifest(cuts, tmp_path / "four.jsonl.gz")
    four = str(tmp_path / "four.jsonl.gz")
    recipe = make_recipe(
        model={"family": "whisper", "tiny": "xs", "name_or_path": "openai/whisper-large-v3"},
        data={"train_manifest": four, "eval_manifest": four},
        train={"epochs": EPOCHS_WHISPER, "micro_batch": 4, "effective_batch": 4, "warmup_steps": 10,
               "save_every_steps": 1000, "log_every_steps": 5, "ctc_aux_weight": 0.0},
        unfreeze={"groups": {"decoder_top": {"top": 1}, "encoder_top": {"top": 1}, "all": {}},
                  "phases": [{"name": "B", "start_epoch": 1, "lr": {"decoder_top": 1e-2}},
                             {"name": "A", "start_epoch": 2, "lr": {"all": 1e-2}}]},
        augment={"speed_factors": [1.0], "spec_augment": {"enabled": False}},
        # 60 tokens: the byte-level tokenizer spends 2 per Hebrew letter; the longest of the four has 22 characters
        eval={"every_steps": EPOCHS_WHISPER, "samples": 4, "batch_size": 4, "max_new_tokens": 60},
    )
    assert train_cli(recipe, tmp_path / "run") == 0
    losses = [x for _, x in read_run.losses(tmp_path / "run")]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.05 * losses[0], losses  # measured: 7.5 → 0.017
    cers = [r["cer"] for r in read_run.evals(tmp_path / "run")]
    assert cers[-1] <= 0.2, cers  # measured: 0.0


def test_tracking_tensorboard_and_wandb_offline_write_no_secrets(make_recipe, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    marker = "caspi-test-secret-4b1e"
    for var in ("HF_TOKEN", "WANDB_API_KEY", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(var, marker)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    recipe = make_recipe(tracking={"tensorboard": True, "wandb": True})
    assert train_cli(recipe, tmp_path / "run", "train.max_steps=4") == 0
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))
    for path in run.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


def test_gradient_checkpointing_gives_the_same_losses(make_recipe, read_run, tmp_path):
    recipe = make_recipe(train={"max_steps": 3, "gradient_checkpointing": True})
    plain = make_recipe("plain", train={"max_steps": 3, "gradient_checkpointing": False})
    assert train_cli(recipe, tmp_path / "ckpt") == 0 and train_cli(plain, tmp_path / "plain") == 0
    a, b = read_run.losses(tmp_path / "ckpt"), read_run.losses(tmp_path / "plain")
    assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)
    run = loop.TrainingRun(load_recipe(recipe), tmp_path / "probe", overrides=[], force_gate=False,
                           cpu_fallback=False, progress=False)
    try:
        run.setup()
        layers = [m for m in run.model.modules() if hasattr(m, "gradient_checkpointing")]
        assert layers and all(m.gradient_checkpointing for m in layers)  # it was switched on, not ignored
        assert run.model.training  # transformers checkpoints only in training mode (from_pretrained gives eval)
    finally:
        run.cleanup()


def test_learns_to_transcribe_from_the_audio(train_corpus, make_recipe, tmp_path):
    """Eight different sentences, trained and evaluated on the same clips: a model that ignored the audio could
    only write one text prior for all eight; CER near 0 means the decoder reads the audio."""
    from caspi.data.cuts import read_manifest, write_manifest

    cuts = read_manifest(train_corpus / "train.jsonl.gz").subset(first=8)
    write_manifest(cuts, tmp_path / "eight.jsonl.gz")
    eight = str(tmp_path / "eight.jsonl.gz")
    recipe = make_recipe(
        model={"tiny": "s"},
        data={"train_manifest": eight, "eval_manifest": eight},
        train={"epochs": 60, "micro_batch": 8, "effective_batch": 8, "warmup_steps": 10, "save_every_steps": 1000,
               "log_every_steps": 10},
        unfreeze={"groups": {"all": {}}, "phases": [{"name": "scratch", "start_epoch": 1, "lr": {"all": 3e-3}}]},
        augment={"speed_factors": [1.0], "spec_augment": {"enabled": False}},
        eval={"every_steps": 20, "samples": 8, "batch_size": 8, "max_new_tokens": 40},
    )
    assert train_cli(recipe, tmp_path / "run") == 0
    final = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cers = [r["cer"] for r in final if r["kind"] == "eval"]
    assert cers[0] > 0.5 and cers[-1] <= 0.1, cers
