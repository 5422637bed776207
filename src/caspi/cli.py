"""The `caspi` command line: parse, load the recipe, call one library function, print its result, map it and
errors to exit codes. Each command holds no logic a notebook user would need: that lives in the library call.

Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 the Phase 0 gate says STOP; `train` also 4 (stopped at
`hardware.budget_usd` after saving) and 143 (preempted after saving). A `CaspiError` is printed as
one message; `--debug` shows the traceback. Heavy imports (torch, lhotse, transformers) happen inside commands
so `caspi --help` and `validate-recipe` stay fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback

from caspi.errors import CaspiError, ConfigError
from caspi.progress import line_interval

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_STOP = 0, 1, 2, 3
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # section.key[.sub]=value


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (exit 2, one message) instead of printing usage and exiting itself."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}\n(run `{self.prog} --help` for usage)")


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional words → (plain arguments, `key.sub=value` overrides)."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def _recipe(args):
    """The --recipe file with its `key.sub=value` overrides applied, or None without --recipe (then overrides are
    a usage error: there is nothing to apply them to)."""
    from caspi.config import load_recipe

    if args.recipe is None:
        if args.overrides:
            raise ConfigError(f"{args.command}: overrides ({' '.join(args.overrides)}) need --recipe")
        return None
    return load_recipe(args.recipe, args.overrides)


# ---------------------------------------------------------------------------------------------------- commands


def cmd_validate_recipe(args) -> int:
    from caspi.config import load_recipe

    paths, overrides = _split_overrides(args.items)
    overrides += args.overrides
    if not paths:
        raise ConfigError("validate-recipe: give at least one recipe file")
    for path in paths:
        recipe = load_recipe(path, overrides)
        hw, t = recipe.hardware, recipe.train
        print(f"{path}: OK  ({recipe.name})")
        model = f"tiny-{recipe.model.tiny}" if recipe.model.tiny else recipe.model.name_or_path
        print(f"  model        {recipe.model.family}  {model}")
        if recipe.model.init_from:
            rev = f" @ {recipe.model.init_revision}" if recipe.model.init_revision else ""
            print(f"  init from    {recipe.model.init_from}{rev}  (the Round-1 weights; {model} is the architecture)")
        print(f"  hardware     {hw.world_size} × {hw.accelerator}{' ' + hw.gpu_type if hw.gpu_type else ''}")
        print(f"  batch        micro {t.micro_batch} × world {hw.world_size} × accumulation "
              f"{recipe.grad_accumulation} = effective {t.effective_batch}")
        for phase in recipe.unfreeze.phases:
            lrs = ", ".join(f"{g} {lr:g}" for g, lr in phase.lr.items())
            print(f"  phase {phase.name:<6} from epoch {phase.start_epoch}: {lrs}")
    return EXIT_OK


def cmd_synth(args) -> int:
    from caspi.data.synth import synthesize

    summary = synthesize(
        args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, error_rate=args.error_rate,
        workers=args.workers, progress=not args.quiet, domains=tuple(args.domains.split(",")),
    )
    print(f"synthesised {summary.n_train} train clips ({summary.train_seconds / 60:.1f} min, "
          f"{summary.n_planted} with planted errors) and {summary.n_eval} eval clips "
          f"({summary.eval_seconds / 60:.1f} min)")
    print(f"  train manifest   {summary.train_manifest}")
    print(f"  eval manifest    {summary.eval_manifest}")
    print(f"  planted errors   {summary.planted_errors}")
    return EXIT_OK


def cmd_import(args) -> int:
    from caspi.data.ingest import import_source

    recipe = _recipe(args)
    # A recipe's limits stand in for the flags not given; without one only the flags limit (no maximum, 0 s).
    max_duration, min_duration = (recipe.data.import_limits(args.max_duration, args.min_duration) if recipe
                                  else (args.max_duration, args.min_duration or 0.0))
    result = import_source(
        args.source, args.out, domain=args.domain, text_field=args.text_field, audio_field=args.audio_field,
        id_field=args.id_field, split=args.split, max_duration=max_duration, min_duration=min_duration,
        strict=args.strict, workers=args.workers, progress=not args.quiet, sets_root=args.sets_root,
    )
    print(result.summary())
    return EXIT_OK


def cmd_stats(args) -> int:
    from caspi.data.stats import render_table, stats_for_manifest

    stats = stats_for_manifest(args.manifest)
    if args.json:
        summary = {k: v for k, v in stats.to_json().items() if k != "samples"}  # per-cut lists are for merging
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(render_table(stats))
    return EXIT_OK


def cmd_train(args) -> int:
    from caspi.train.loop import train
    from caspi.train.preempt import EXIT_REQUEUE
    from caspi.train.resources import EXIT_OVER_BUDGET

    result = train(_recipe(args), args.out, overrides=args.overrides, force_gate=args.force_gate,
                   cpu_fallback=args.cpu_fallback, progress=not args.quiet, new_data=args.new_data)
    if result.preempted:
        return EXIT_REQUEUE
    if result.over_budget:  # the loop printed why and how to go on
        return EXIT_OVER_BUDGET
    if not result.is_main:  # under torchrun, rank 0 reports
        return EXIT_OK
    best = f", best WER {result.best_wer:.3f}" if result.best_wer is not None else ""
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "-"
    print(f"trained {result.step} steps ({result.epoch} epochs), last loss {loss}{best}")
    print(f"  run folder   {result.run_dir}")
    print(f"  checkpoint   {result.checkpoint}")
    return EXIT_OK


def cmd_audit(args) -> int:
    from caspi.audit.gate import STOP
    from caspi.audit.run import audit, render_summary
    from caspi.config import AuditConfig

    recipe = _recipe(args)
    config = recipe.audit if recipe else AuditConfig()
    if args.clean is not None:
        config = config.model_copy(update={"clean": args.clean})
    result = audit(args.manifest, args.out, config, all_samples=args.all, progress=not args.quiet)
    print(render_summary(result.report))
    print(f"report            {result.report_path}")
    decision, cleaning = result.report["decision_sample"], result.report["cleaning"]
    print(f"scored            {decision['scored_samples']:,} samples for the decision "
          f"({', '.join(decision['scorers'])}); {cleaning['scored_samples']:,} for the cleaning "
          f"({', '.join(cleaning['scorers']) or 'none'})")
    if result.cleaned_path is None:
        print(f"cleaned manifest  none: {cleaning['note']}")
    else:
        print(f"cleaned manifest  {result.cleaned_path}  ({cleaning['removed_samples']:,} of "
              f"{cleaning['scored_samples']:,} samples removed, listed in {cleaning['removed_list']})")
    return EXIT_STOP if result.decision == STOP else EXIT_OK


def _eval_settings(recipe):
    """(the recipe's eval section, its model.language), or (None, None): `evaluate`'s defaults, Hebrew."""
    return (recipe.eval, recipe.model.language) if recipe else (None, None)


def cmd_eval(args) -> int:
    from caspi.eval.evaluate import evaluate, render_table

    if args.sets is not None:
        return _eval_sets(args)
    if args.sets_root is not None:
        raise ConfigError("eval: --sets-root goes with --sets (the eval sets by name), not with --manifest")
    config, language = _eval_settings(_recipe(args))
    result = evaluate(args.manifest, args.out, config, model=args.model, hypotheses=args.hypotheses,
                      language=language, resamples=args.resamples, seed=args.seed, progress=not args.quiet)
    print(render_table(result.summary))
    print(f"predictions  {result.out_dir / 'predictions.jsonl'}\nsummary      {result.out_dir / 'summary.json'}")
    return EXIT_OK


def _eval_sets(args) -> int:
    from caspi.eval.sets import evaluate_sets, render_sets

    if args.model is None:
        raise ConfigError("eval: --sets decodes each set with --model; score a hypotheses file with --manifest")
    config, language = _eval_settings(_recipe(args))
    result = evaluate_sets(args.sets, args.out, config, model=args.model, sets_root=args.sets_root,
                           language=language, resamples=args.resamples, seed=args.seed, progress=not args.quiet)
    print(render_sets(result))
    for ext, path in result.files.items():
        print(f"sets.{ext:<5} {path}")
    return EXIT_OK


def cmd_compare(args) -> int:
    from caspi.eval.compare import compare_systems, render_table

    config, language = _eval_settings(_recipe(args))
    result = compare_systems(args.a, args.b, args.out, manifest=args.manifest, config=config, language=language,
                             names=args.names, resamples=args.resamples, seed=args.seed, progress=not args.quiet)
    names = result.names
    print(render_table(result.rows, names))
    for ext in ("csv", "json", "md", "png"):
        print(f"comparison.{ext:<5} {result.out_dir / f'comparison.{ext}'}")
    if args.fail_if_worse and result.any_worse:
        worse = [r["dataset"] for r in result.rows if r["verdict"] == "worse"]
        print(f"caspi: {names[1]} is significantly worse on {', '.join(worse)} (--fail-if-worse)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_export(args) -> int:
    from caspi.train.export import export_run

    out = export_run(args.run, args.out)
    print(f"exported {args.run} to {out} (load it with from_pretrained)")
    return EXIT_OK


def cmd_convert(args) -> int:
    from caspi.models.convert import convert

    report = convert(args.src, args.out, processor_from=args.processor_from)
    print(report.summary())
    print(f"  load it with from_pretrained, or give {args.out} wherever Caspi takes a model")
    return EXIT_OK


def cmd_report(args) -> int:
    from caspi.report.build import build_report

    result = build_report(args.inputs, args.out, max_samples=args.max_samples, command=args.argv)
    for note in result.notes:
        print(note)
    flagged = sum(len(a.flagged) for a in result.audits)
    print(f"report: {len(result.audits)} audit(s) ({flagged} flagged samples, {len(result.audio_files)} clips), "
          f"{len(result.compares)} comparison(s), {len(result.runs)} run(s)")
    print(f"  page   {result.page}  (open it in a browser; the folder is self-contained)")
    if args.screenshot:
        from caspi.report.screenshot import screenshot

        print(f"  screenshot {screenshot(result.page, args.screenshot)}")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from caspi.doctor import checks_json, exit_code, render_checks, run_checks

    checks = run_checks(_recipe(args), out=args.out, network=not args.offline, timeout=args.timeout)
    print(checks_json(checks) if args.json else render_checks(checks))
    return exit_code(checks)


def cmd_plan(args) -> int:
    from caspi.plan import make_plan, render_plan

    plan = make_plan(_recipe(args), gpus=args.gpus, nodes=args.nodes, gpu_mem=args.gpu_mem, price=args.price,
                     samples=args.samples, manifest=args.manifest, throughput=args.throughput, measure=args.measure)
    print(json.dumps(plan.to_json(), ensure_ascii=False, indent=2) if args.json else render_plan(plan))
    return EXIT_OK


def cmd_slurm(args) -> int:
    from pathlib import Path

    from caspi.slurm import SCRIPT_NAME, job_script, submit, write_script

    text = job_script(_recipe(args), args.recipe, args.out, args.overrides, nodes=args.nodes,
                      gpus_per_node=args.gpus_per_node, partition=args.partition, account=args.account,
                      time=args.time)
    path = write_script(text, args.script or Path(args.out) / SCRIPT_NAME, run_dir=args.out)
    if not args.submit:
        print(f"wrote {path}\n  submit it with: sbatch {path}")
        return EXIT_OK
    job = submit(path)
    # stdout is the job id alone, as `sbatch --parsable` prints it: JOB=$(caspi slurm ... --submit)
    print(f"caspi: wrote {path}; submitted job {job}, log {Path(args.out) / f'slurm-{job}.log'}", file=sys.stderr)
    print(job)
    return EXIT_OK


def cmd_demo(args) -> int:
    from caspi.demo import run_demo

    result = run_demo(args.out, run=main, seed=args.seed, size=args.size, recipes=args.recipes)
    return EXIT_STOP if result.decision == "STOP" else EXIT_OK


# ---------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="caspi", description="Fine-tune speech-LLM ASR models for Hebrew.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="the Round-2 workflow on CPU: synth → Round 1 → Phase 0 with it → Round 2 from "
                                     "it (preempted and resumed) → eval, compare → report.html (about 10 min)")
    p.add_argument("--out", default="runs/demo", help="output folder: new, empty, or an earlier demo of the same "
                                                      "seed and size (its finished steps are kept)")
    p.add_argument("--seed", type=int, default=0, help="synthesis and training seed")
    p.add_argument("--size", choices=("full", "quick"), default="full",
                   help="full: the main job; quick: the same steps on a few clips (a check of the workflow)")
    p.add_argument("--recipes", help="folder with demo-cpu.yaml and demo-round2.yaml (default: ./recipes, else the "
                                     "repository's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate-recipe", help="check recipe files; report every problem at once")
    p.add_argument("items", nargs="+", metavar="RECIPE|KEY=VALUE",
                   help="recipe YAML files, and overrides such as train.max_steps=100")
    p.set_defaults(func=cmd_validate_recipe)

    p = sub.add_parser("synth", help="synthesise a Hebrew corpus with espeak-ng (4 domains, planted errors)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-eval", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--error-rate", type=float, default=0.0, help="share of training samples given planted errors")
    p.add_argument("--domains", default="studio,broadcast,whatsapp,d1",
                   help="comma-separated domains, in equal shares (default: all four)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="import a dataset into a validated Lhotse manifest")
    p.add_argument("source", help="HF dataset id (org/name or org/name:config), save_to_disk folder, parquet, "
                                  "NeMo JSONL, audio folder, Lhotse manifest, or an eval set by name (eval-d1, "
                                  "eval-whatsapp, saspeech, fleurs-he, kan, cv17-he: hub id, split, columns and "
                                  "domain filled in)")
    p.add_argument("--out", required=True, help="manifest to write (.jsonl.gz)")
    p.add_argument("--domain", help="domain name for every sample (default: a `domain` field, else the source)")
    p.add_argument("--text-field", help="transcript column/field")
    p.add_argument("--audio-field", help="audio column (HF datasets)")
    p.add_argument("--id-field", help="id column/field")
    p.add_argument("--split", help="dataset split (HF datasets; default train, an eval set's own split)")
    p.add_argument("--sets-root", metavar="DIR", help="for an eval set name: read DIR/<name>/*.parquet (hub layout) "
                                                      "instead of the hub (default: $CASPI_EVAL_SETS)")
    p.add_argument("--recipe", help="take data.max_duration / data.min_duration from this recipe (overrides such "
                                    "as data.max_duration=20 may follow)")
    p.add_argument("--max-duration", type=float, help="reject clips longer than this (seconds)")
    p.add_argument("--min-duration", type=float, help="reject clips shorter than this (seconds)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad sample instead of skipping it")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("stats", help="per-domain counts, hours, duration percentiles, characters per second")
    p.add_argument("manifest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("audit", help="Phase 0: score a stratified sample, decide PROCEED/CAUTION/STOP, write a "
                                      "report and a cleaned manifest (exit 3 on STOP)")
    p.add_argument("--manifest", required=True, help="the training manifest to audit")
    p.add_argument("--out", required=True, help="output folder (alignment_report.json, cleaned.jsonl.gz, cache)")
    p.add_argument("--recipe", help="take the audit: section (thresholds, scorers) from this recipe")
    p.add_argument("--all", action="store_true", help="audit every sample, not a stratified share")
    p.add_argument("--clean", choices=("all", "none"),
                   help="all: score every sample with the cheap scorers and write the cleaned manifest; none: write "
                        "no cleaned manifest (default: the recipe's audit.clean, all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("train", help="train (or resume) a run from a recipe; torchrun for several processes")
    p.add_argument("--recipe", required=True, help="recipe YAML; overrides such as train.max_steps=100 may follow")
    p.add_argument("--out", required=True, help="run folder; an existing one is resumed from its latest checkpoint")
    p.add_argument("--force-gate", action="store_true",
                   help="train even if the Phase 0 report says STOP or was made from another manifest (recorded)")
    p.add_argument("--cpu-fallback", action="store_true", help="continue on CPU when CUDA is not available")
    p.add_argument("--new-data", action="store_true",
                   help="resume although a manifest changed since the checkpoint: restart the current epoch on the "
                        "new data (the saved sampler position is dropped; recorded in run.json and metrics.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.epilog = ("exit 4: the cost reached hardware.budget_usd (saved; append hardware.budget_usd=N to go on); "
                "exit 143: preempted (saved; run the same command to resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="per-domain WER/CER with bootstrap intervals for a model or a hypotheses file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a Caspi run or checkpoint folder, an exported folder, or a hub id")
    which.add_argument("--hypotheses", help="JSONL of another system: `id` (or the audio file stem), `hypothesis`")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", help="the eval manifest (references and domains)")
    data.add_argument("--sets", metavar="all|NAME,...",
                      help="the field's eval sets by name (eval-d1, eval-whatsapp, saspeech, fleurs-he, kan, "
                           "cv17-he), each imported into OUT/sets/ (reused on a rerun) and decoded once with "
                           "--model; one table OUT/sets.{md,csv,json}, leaderboard and own normaliser. With `all` a "
                           "set not available here is listed as such")
    p.add_argument("--sets-root", metavar="DIR", help="with --sets: read DIR/<name>/*.parquet (hub layout) instead "
                                                      "of the hub (default: $CASPI_EVAL_SETS)")
    p.add_argument("--out", required=True, help="output folder (predictions.jsonl, summary.json; with --sets one "
                                                "folder per set and the table)")
    p.add_argument("--recipe", help="take the eval: section (normaliser, batch size, beams) from this recipe")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="two systems per domain: WER, paired bootstrap CI and p, BH-corrected "
                                        "verdicts; CSV, JSON, Markdown, PNG")
    p.add_argument("a", help="eval output folder of system A (or a model, with --manifest)")
    p.add_argument("b", help="eval output folder of system B (or a model, with --manifest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--manifest", help="eval manifest, to evaluate A or B first when they are models")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="names in the tables (default: folder names)")
    p.add_argument("--recipe", help="eval: settings for models evaluated here")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fail-if-worse", action="store_true", help="exit 1 when B is significantly worse anywhere")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="a run or checkpoint as a merged model folder that from_pretrained loads")
    p.add_argument("run", help="run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export (replaced "
                                                "atomically); any other non-empty folder is refused")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="a Qwen3-ASR checkpoint in the original qwen-asr layout or an HF Trainer "
                                        "checkpoint-N/ folder as a native folder that transformers 5.x loads")
    p.add_argument("src", help="the folder to convert (config.json with thinker_config, or checkpoint-N/)")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier conversion (replaced "
                                                "atomically); any other non-empty folder is refused")
    p.add_argument("--processor-from", metavar="ID_OR_FOLDER",
                   help="hub id or folder for the processor files SRC lacks (e.g. Qwen/Qwen3-ASR-1.7B-hf)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("plan", help="parameters, memory per GPU, steps, hours and cost of a recipe, and the same "
                                     "effective batch on 1, 2 and 8 GPUs (builds the model on the meta device)")
    p.add_argument("--recipe", required=True, help="recipe YAML; overrides such as train.micro_batch=4 may follow")
    p.add_argument("--gpus", type=int, help="GPUs per node (default: hardware.gpus_per_node)")
    p.add_argument("--nodes", type=int, help="nodes (default: hardware.nodes)")
    p.add_argument("--gpu-mem", type=float, metavar="GIB", help="memory per GPU (default: hardware.gpu_memory_gib)")
    p.add_argument("--price", type=float, metavar="USD", help="USD per GPU-hour (default: hardware.price_per_gpu_hour)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--samples", type=int, help="training clips per epoch, instead of a manifest")
    size.add_argument("--manifest", help="training manifest (default: data.train_manifest, when it exists)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--throughput", type=float, metavar="SAMPLES_PER_S",
                       help="training samples per second on one GPU (hours and cost are unknown without it)")
    speed.add_argument("--measure", action="store_true",
                       help="measure the throughput here: a few real training steps on the manifest's longest clips "
                            "(needs the model's weights and the recipe's device)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="one self-contained HTML page (report.html + its audio and plots) from audit, "
                                       "compare and run folders")
    p.add_argument("inputs", nargs="+", metavar="FOLDER",
                   help="audit, compare or run folders, or a folder holding them (e.g. runs/)")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier report (replaced)")
    p.add_argument("--max-samples", type=int, default=100,
                   help="flagged samples listed with their audio, per audit (the rest in a table)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="also save the page's top as a small PNG (e.g. docs/report.png; needs chromium + playwright)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("doctor", help="pre-flight checks: PASS/WARN/FAIL for the machine (torch, CUDA or ROCm, GPUs, "
                                       "disk, tokens) and, with --recipe, its model, data, Phase 0 gate and memory "
                                       "plan (exit 1 on any FAIL)")
    p.add_argument("--recipe", help="also check what this recipe needs (overrides such as train.micro_batch=4 may "
                                    "follow)")
    p.add_argument("--out", default=".", help="the run folder: free disk is measured there (default: here)")
    p.add_argument("--offline", action="store_true", help="ask the hub nothing: models not cached are a WARN")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds each network check may take")
    p.add_argument("--json", action="store_true", help="print JSON (for CI) instead of one line a check")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("slurm", help="write (--submit: and submit) an sbatch script that runs doctor, plan and the "
                                      "trainer of a recipe; stopped, it saves; warned, it requeues itself and resumes")
    p.add_argument("--recipe", required=True, help="recipe YAML; overrides such as train.max_steps=100 may follow (the "
                                                   "job passes them to every command)")
    p.add_argument("--out", required=True, help="the run folder; the job's log is OUT/slurm-<job id>.log")
    p.add_argument("--nodes", type=int, help="nodes (default: hardware.nodes)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs (processes) per node (default: hardware.gpus_per_node)")
    p.add_argument("--partition", help="SLURM partition (default: slurm.partition, else the cluster's)")
    p.add_argument("--account", help="SLURM account (default: slurm.account)")
    p.add_argument("--time", help="time limit, e.g. 1-00:00:00 (default: slurm.time, else the partition's)")
    p.add_argument("--script", help="where to write the script (default: OUT/job.sbatch)")
    p.add_argument("--submit", action="store_true", help="submit it with sbatch and print the job id")
    p.set_defaults(func=cmd_slurm)
    return parser


RECORDED = {"synth", "audit", "train", "eval", "compare", "report", "slurm"}  # commands whose --out folder lists them


def _record(args, argv: list[str], code: int, started: float) -> None:
    """Append the command to OUT/commands.jsonl (`caspi.report.commands`), so the report can list the exact
    commands that made each folder. Under torchrun only rank 0 records. Never fails the command."""
    if args.command not in RECORDED:
        return
    from caspi.report.commands import record_command
    from caspi.train.distributed import World

    if not World.from_env().is_main:
        return

    try:
        record_command(args.out, argv, code, started)
    except OSError as exc:
        print(f"caspi: warning: could not record the command in {args.out}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        # Recipe overrides (`section.key=value`) may stand anywhere after the command; argparse cannot mix a
        # trailing positional list with options, so they are taken from what it leaves over.
        args, rest = parser.parse_known_args(argv)
        unknown = [word for word in rest if not _OVERRIDE.match(word)]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [word for word in rest if _OVERRIDE.match(word)]
        if args.overrides and not hasattr(args, "recipe") and not hasattr(args, "items"):
            parser.error(f"{args.command} takes no recipe, so no overrides: {' '.join(args.overrides)}")
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        args.argv = argv
        line_interval()  # a bad CASPI_PROGRESS_EVERY_S stops the command now, not when its first bar starts
        started = time.time()
        code = int(args.func(args) or EXIT_OK)
        _record(args, argv, code, started)
        return code
    except CaspiError as exc:
        if debug:
            traceback.print_exc()
        print(f"caspi: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("caspi: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
