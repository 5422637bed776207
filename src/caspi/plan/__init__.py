"""`caspi plan`: parameters, memory, steps, hours and cost of a recipe, computed before any GPU hour is paid.

    plan = make_plan(recipe, gpus=8, samples=186_812, throughput=12.0)
    plan.layout.total_steps, plan.layout.hours, plan.layout.cost_usd      # the recipe's layout (--gpus/--nodes)
    plan.table                                                            # the same effective batch on 1, 2, 8 GPUs
    print(render_plan(plan)); json.dumps(plan.to_json())

The parts: `caspi.plan.params` (the model's exact parameter counts per phase, built on the meta device),
`caspi.plan.memory` (memory per GPU per phase), `caspi.plan.schedule` (steps, hours, cost, and `--measure`). This
module puts them together for one recipe and a set of GPU counts, and renders the result. Nothing here guesses a
throughput: without `throughput` or `measure`, hours and cost are None ("unknown").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caspi.config import Recipe
from caspi.errors import ConfigError, DataError
from caspi.models import get_family
from caspi.plan.memory import MemoryPlan, memory_plan
from caspi.plan.params import ModelPlan, plan_model
from caspi.plan.schedule import (
    DDP_EFFICIENCY,
    Measurement,
    Steps,
    accumulation,
    batches_per_rank,
    cost_usd,
    count_steps,
    ddp_efficiency,
    divisible_micro_batch,
    measure_throughput,
    phase_epochs,
    require_positive,
    run_hours,
)
from caspi.train.batches import cuts_within_durations

__all__ = ["Layout", "Plan", "make_plan", "render_plan"]

TABLE_GPUS = (1, 2, 8)  # seed 002's question: the same effective batch on one, two or eight GPUs


@dataclass
class Data:
    """What an epoch holds: the manifest's clips within the recipe's duration limits, or a given sample count."""

    source: str  # "manifest", "samples" or "none" (no manifest here and no --samples: no steps)
    manifest: str | None = None
    clips: int | None = None  # per epoch
    skipped: int | None = None  # cuts of the manifest outside data.min_duration..max_duration
    audio_hours: float | None = None  # of the clips trained (manifest) or as given
    longest_seconds: float | None = None  # the longest clip trained, before speed perturbation
    missing: str | None = None  # the recipe's manifest path when it does not exist here


@dataclass
class Throughput:
    samples_per_s_per_gpu: float | None  # None: unknown
    source: str | None  # "given" (--throughput) or "measured" (--measure)
    detail: str = ""


@dataclass
class Layout:
    """One way to run the recipe: a number of GPUs, with the effective batch kept by accumulation."""

    nodes: int
    gpus_per_node: int
    micro_batch: int
    effective_batch: int
    accumulation: int | None  # None: effective_batch is not a multiple of micro_batch × world_size
    suggested_micro_batch: int | None  # the largest smaller micro-batch that divides, where accumulation is None
    memory: list[MemoryPlan]  # per unfreeze phase, at `micro_batch`
    steps: Steps | None = None  # None: no data, or not divisible
    exact_count: bool = False  # batches counted by the trainer's own sampler (else estimated)
    hours: float | None = None  # wall clock; None: no throughput
    gpu_hours: float | None = None
    cost_usd: float | None = None  # None: no throughput or no price

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def divisible(self) -> bool:
        return self.accumulation is not None

    @property
    def peak(self) -> MemoryPlan:
        """The phase that needs the most memory per GPU."""
        return max(self.memory, key=lambda m: m.total_bytes)

    @property
    def fits(self) -> bool | None:
        """Every phase fits the GPU's memory with the margin; None when the GPU's memory is unknown."""
        verdicts = [m.fits for m in self.memory]
        return None if None in verdicts else all(verdicts)

    @property
    def total_steps(self) -> int | None:
        return self.steps.total_steps if self.steps else None

    def to_json(self, phase_names: list[str]) -> dict[str, Any]:
        s = self.steps
        first = 1
        phases = []
        for i, (name, mem) in enumerate(zip(phase_names, self.memory, strict=True)):
            steps = s.phase_steps[i] if s else None
            phases.append({"name": name, "steps": steps, "first_step": first if steps else None,
                           "memory": _memory_json(mem)})
            first += steps or 0
        return {
            "nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "world_size": self.world_size,
            "micro_batch": self.micro_batch, "effective_batch": self.effective_batch,
            "accumulation": self.accumulation, "divisible": self.divisible,
            "suggested_micro_batch": self.suggested_micro_batch,
            "batches_per_rank": s.batches_per_rank if s else None, "batch_count": _count_kind(self),
            "steps_per_epoch": s.steps_per_epoch if s else None, "total_steps": s.total_steps if s else None,
            "memory_gib": self.peak.total_gib, "fits": self.fits, "phases": phases,
            "hours": self.hours, "gpu_hours": self.gpu_hours, "cost_usd": self.cost_usd,
        }


@dataclass
class Plan:
    recipe: Recipe
    model: ModelPlan
    data: Data
    throughput: Throughput
    layout: Layout  # the recipe's hardware, with --gpus / --nodes applied
    table: list[Layout]  # TABLE_GPUS and the recipe's layout, one node each except the recipe's own
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain, JSON-serialisable numbers; the keys are stable (scripts and `caspi doctor` read them)."""
        r, hw, m = self.recipe, self.recipe.hardware, self.model
        names = [p.name for p in r.unfreeze.phases]
        epochs = phase_epochs(r)
        return {
            "recipe": r.name,
            "model": {
                "family": m.family, "source": m.source, "name_or_path": r.model.name_or_path,
                "tiny": r.model.tiny, "init_from": r.model.init_from, "dtype": r.model.dtype,
                "total": m.total, "lora_total": m.lora_total, "notes": list(m.notes),
                "phases": [{"name": p.name, "start_epoch": p.start_epoch, "end_epoch": epochs[i][1],
                            "groups": dict(p.groups), "lora": p.lora, "trainable": p.trainable}
                           for i, p in enumerate(m.phases)],
            },
            "hardware": {"nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node, "world_size": hw.world_size,
                         "accelerator": hw.accelerator, "gpu_type": hw.gpu_type, "gpu_memory_gib": hw.gpu_memory_gib,
                         "price_per_gpu_hour": hw.price_per_gpu_hour},
            "train": {"epochs": r.train.epochs, "max_steps": r.train.max_steps, "micro_batch": r.train.micro_batch,
                      "effective_batch": r.train.effective_batch,
                      "gradient_checkpointing": r.train.gradient_checkpointing},
            "data": dataclasses.asdict(self.data),
            "throughput": {**dataclasses.asdict(self.throughput), "ddp_efficiency": DDP_EFFICIENCY,
                           "ddp_efficiency_is_assumed": True},
            "layout": self.layout.to_json(names),
            "table": [layout.to_json(names) for layout in self.table],
            "notes": list(self.notes),
        }


def _memory_json(mem: MemoryPlan) -> dict[str, Any]:
    other = mem.other
    return {
        "terms": dict(mem.terms), "total_bytes": mem.total_bytes, "total_gib": mem.total_gib, "fits": mem.fits,
        "margin_gib": mem.margin_gib, "largest_micro_batch": mem.largest_micro_batch,
        "gradient_checkpointing": mem.gradient_checkpointing, "sequence": dataclasses.asdict(mem.sequence),
        "other_checkpointing": None if other is None else {
            "gradient_checkpointing": other.gradient_checkpointing, "total_bytes": other.total_bytes,
            "total_gib": other.total_gib, "fits": other.fits, "largest_micro_batch": other.largest_micro_batch},
        "notes": list(mem.notes),
    }


def _count_kind(layout: Layout) -> str | None:
    if layout.steps is None:
        return None
    return "exact" if layout.exact_count else "estimate"


# ---------------------------------------------------------------------------------------------------------------
# Building the plan


def _with_hardware(recipe: Recipe, **changes) -> Recipe:
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return recipe
    return recipe.model_copy(update={"hardware": recipe.hardware.model_copy(update=changes)})


def _data(recipe: Recipe, *, samples: int | None, hours: float | None, manifest: str | Path | None):
    """(Data, the training cuts or None)."""
    if samples is not None and manifest is not None:
        raise ConfigError("give the epoch's size as --samples or as --manifest, not both")
    if samples is not None:
        return Data("samples", clips=samples, audio_hours=hours), None
    missing = None
    if manifest is None:
        default = recipe.data.train_manifest
        if default and Path(default).is_file():
            manifest = default
        else:
            missing = default
    elif not Path(manifest).is_file():
        raise DataError(f"{manifest}: training manifest not found (--manifest)")
    if manifest is None:
        return Data("none", audio_hours=hours, missing=missing), None
    cuts, skipped = cuts_within_durations(manifest, recipe.data)
    durations = [c.duration for c in cuts]
    return Data("manifest", manifest=str(manifest), clips=len(cuts), skipped=skipped,
                audio_hours=sum(durations) / 3600, longest_seconds=max(durations)), cuts


def _longest_trained(recipe: Recipe, data: Data) -> float:
    """Seconds of the longest clip the model sees: the manifest's longest kept clip (else data.max_duration) after
    the slowest speed perturbation, which the dataset skips where it would pass the family's window (Whisper 30 s)."""
    longest = data.longest_seconds if data.longest_seconds is not None else recipe.data.max_duration
    slowest = min([1.0, *recipe.augment.speed_factors])
    window = get_family(recipe.model.family).max_audio_seconds
    stretched = longest / slowest
    return stretched if window is None or stretched <= window else max(longest, window)


def phase_memory(recipe: Recipe, model: ModelPlan | None = None,
                 gpu_memory_gib: float | None = None) -> list[MemoryPlan]:
    """Memory per GPU of each phase at the recipe's own hardware and micro-batch, for the clip length `make_plan`
    takes (the manifest's longest kept clip when the manifest exists, else data.max_duration, after the slowest
    speed factor): what `caspi doctor` checks, so the two commands give one figure. `gpu_memory_gib`: the card's
    size to fit (default hardware.gpu_memory_gib)."""
    recipe = _with_hardware(recipe, gpu_memory_gib=gpu_memory_gib)
    model = model or plan_model(recipe)
    data, _ = _data(recipe, samples=None, hours=None, manifest=None)
    hw = recipe.hardware
    return [memory_plan(recipe, model, phase, micro_batch=recipe.train.micro_batch, world_size=hw.world_size,
                        gpu_memory_gib=hw.gpu_memory_gib, max_seconds=_longest_trained(recipe, data))
            for phase in model.phases]


def _layout(recipe: Recipe, model: ModelPlan, data: Data, cuts, *, nodes: int, gpus_per_node: int,
            throughput: float | None, max_seconds: float, counts: dict) -> Layout:
    world = nodes * gpus_per_node
    r = _with_hardware(recipe, nodes=nodes, gpus_per_node=gpus_per_node)
    t, hw = r.train, r.hardware
    accum = accumulation(r, world)
    memory = [memory_plan(r, model, phase, micro_batch=t.micro_batch, world_size=world,
                          gpu_memory_gib=hw.gpu_memory_gib, max_seconds=max_seconds)
              for phase in model.phases]
    layout = Layout(nodes, gpus_per_node, t.micro_batch, t.effective_batch, accum,
                    None if accum is not None else divisible_micro_batch(r, world), memory)
    if accum is None or data.clips is None:
        return layout
    if world not in counts:  # one sampler pass per world size (the 1/2/8 table repeats the recipe's)
        counts[world] = batches_per_rank(r, world, cuts=cuts, samples=None if cuts is not None else data.clips)
    batches, layout.exact_count = counts[world]
    layout.steps = count_steps(r, batches, accum)
    if throughput is not None:
        layout.hours = run_hours(data.clips, layout.steps.epochs_run, throughput, world)
        layout.gpu_hours = layout.hours * world
        if hw.price_per_gpu_hour is not None:
            layout.cost_usd = cost_usd(layout.hours, world, hw.price_per_gpu_hour)
    return layout


def make_plan(recipe: Recipe, *, gpus: int | None = None, nodes: int | None = None, gpu_mem: float | None = None,
              price: float | None = None, samples: int | None = None, hours: float | None = None,
              manifest: str | Path | None = None, throughput: float | None = None, measure: bool = False) -> Plan:
    """The plan of `recipe` (see the module docstring).

    gpus, nodes: GPUs per node and nodes (default the recipe's `hardware`); gpu_mem: GiB per GPU (default
    `hardware.gpu_memory_gib`); price: USD per GPU-hour (default `hardware.price_per_gpu_hour`); samples: clips per
    epoch, instead of a manifest; hours: audio hours of those samples (shown only); manifest: the training manifest
    (default `data.train_manifest` when the file exists); throughput: samples per second on one GPU; measure: time
    real training steps here instead (`caspi.plan.schedule.measure_throughput`). Bad values raise ConfigError, a
    missing manifest DataError."""
    require_positive("gpus", gpus, integer=True)
    require_positive("nodes", nodes, integer=True)
    require_positive("gpu_mem", gpu_mem)
    require_positive("price", price, allow_zero=True)
    require_positive("samples", samples, integer=True)
    require_positive("hours", hours)
    require_positive("throughput", throughput)
    if measure and throughput is not None:
        raise ConfigError("give --throughput or --measure, not both")
    recipe = _with_hardware(recipe, gpus_per_node=gpus, nodes=nodes, gpu_memory_gib=gpu_mem,
                            price_per_gpu_hour=price)
    model = plan_model(recipe)
    data, cuts = _data(recipe, samples=samples, hours=hours, manifest=manifest)
    notes: list[str] = []

    tp = Throughput(throughput, "given" if throughput is not None else None)
    if measure:
        if cuts is None:
            raise ConfigError("--measure trains on the longest clips of the training manifest: give --manifest, or "
                              "have data.train_manifest here (--samples has no audio)")
        m: Measurement = measure_throughput(recipe, cuts)
        tp = Throughput(m.samples_per_s, "measured", m.describe())

    hw = recipe.hardware
    max_seconds = _longest_trained(recipe, data)
    counts: dict = {}
    layout = _layout(recipe, model, data, cuts, nodes=hw.nodes, gpus_per_node=hw.gpus_per_node,
                     throughput=tp.samples_per_s_per_gpu, max_seconds=max_seconds, counts=counts)
    table = [layout if n == hw.world_size else
             _layout(recipe, model, data, cuts, nodes=1, gpus_per_node=n, throughput=tp.samples_per_s_per_gpu,
                     max_seconds=max_seconds, counts=counts)
             for n in sorted({*TABLE_GPUS, hw.world_size})]

    if data.source == "none":
        where = f" ({data.missing} is not here)" if data.missing else ""
        notes.append(f"steps unknown: give --samples N or --manifest PATH{where}")
    if tp.samples_per_s_per_gpu is None:
        notes.append("hours and cost unknown: pass --throughput SAMPLES_PER_S_PER_GPU or --measure")
    elif any(lay.world_size > 1 and lay.hours is not None for lay in table):
        notes.append(f"N GPUs are assumed to reach {DDP_EFFICIENCY:.0%} of N × one GPU's throughput "
                     "(DDP_EFFICIENCY, an assumption, not a measurement)")
    if tp.samples_per_s_per_gpu is not None and hw.price_per_gpu_hour is None:
        notes.append("cost unknown: pass --price USD_PER_GPU_HOUR or set hardware.price_per_gpu_hour")
    if any(lay.steps and not lay.exact_count for lay in table) and data.source == "manifest":
        notes.append(f"micro-batches per epoch estimated by packing the {data.clips:,} clips longest first (the "
                     "trainer's sampler makes a few more, one partial batch per duration bucket)")
    if data.source == "samples":
        extra = " (train.max_batch_duration can only make more, unknown without durations)" if (
            recipe.train.max_batch_duration) else ""
        notes.append(f"steps from {data.clips:,} samples in full micro-batches{extra}")
    if recipe.train.max_steps is not None and layout.steps and layout.steps.total_steps < (
            layout.steps.steps_per_epoch * recipe.train.epochs):
        notes.append(f"train.max_steps = {recipe.train.max_steps:,} ends the run before train.epochs")
    return Plan(recipe, model, data, tp, layout, table, notes)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _gib(n_bytes: int | float) -> str:
    return f"{n_bytes / 2**30:,.2f} GiB"


def _num(value, fmt: str = ",", unknown: str = "—") -> str:
    return unknown if value is None else format(value, fmt)


def _hours(value: float | None) -> str:
    """Hours to one decimal; below one hour two significant digits (a CPU demo runs for minutes)."""
    if value is None:
        return "—"
    return f"{value:,.1f}" if value >= 0.95 else f"{value:.2g}"


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def _table(header: list[str], rows: list[list[str]], right: set[int], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; `right`: indices of right-aligned (number) columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return (indent + "  ".join(cells)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _fit_text(mem: MemoryPlan, layout: Layout) -> str:
    if mem.fits is None:
        return "unknown (no hardware.gpu_memory_gib / --gpu-mem)"
    if mem.fits:
        return f"yes, {mem.margin_gib:,.1f} GiB to spare"
    m = mem.largest_micro_batch
    if not m:
        return "NO, not even with micro-batch 1"
    per = m * layout.world_size
    accum = (f"accumulation {layout.effective_batch // per}" if layout.effective_batch % per == 0
             else f"effective {layout.effective_batch} not a multiple of {m} × {layout.world_size}")
    return f"NO: micro-batch {m} fits ({accum})"


def render_plan(plan: Plan) -> str:
    """The plan as readable text: model, trainable parameters, memory, steps, time and cost, the GPU table."""
    r, m, d, lay = plan.recipe, plan.model, plan.data, plan.layout
    hw, t = r.hardware, r.train
    out: list[str] = [f"caspi plan: {r.name}" + (f" — {r.description}" if r.description else "")]
    weights = f"; weights from {r.model.init_from}" if r.model.init_from else ""
    out.append(f"  model       {m.family} {m.source}, {r.model.dtype}{weights}")
    about = [x for x in (hw.gpu_type, f"{hw.gpu_memory_gib:g} GiB each" if hw.gpu_memory_gib else None) if x]
    price = f", ${hw.price_per_gpu_hour:,.2f} per GPU-hour" if hw.price_per_gpu_hour is not None else ""
    n = hw.gpus_per_node
    unit = ("GPU" if n == 1 else "GPUs") if hw.accelerator == "cuda" else ("CPU process" if n == 1 else "CPU processes")
    out.append(f"  hardware    {hw.nodes} node{'s' * (hw.nodes > 1)} × {n} {unit}"
               + (f" ({', '.join(about)})" if about else "") + price)
    lora = f" (+ {m.lora_total:,} LoRA adapter parameters)" if m.lora_total else ""
    out.append(f"  parameters  {m.total:,}{lora}")

    # Trainable parameters per phase
    epochs = phase_epochs(r)
    rows = []
    for i, p in enumerate(m.phases):
        first, last = epochs[i]
        span = f"{first}" if first == last else f"{first}–{last}"
        label = [p.name, span]
        for group, n in p.groups.items():
            rows.append([*label, group, f"{n:,}"])
            label = ["", ""]
        if p.lora:
            rows.append(["", "", "of which LoRA", f"{p.lora:,}"])
        rows.append(["", "", "trainable", f"{p.trainable:,}"])
    out += ["", "Trainable parameters per phase",
            *_table(["phase", "epochs", "group", "parameters"], rows, right={3})]

    # Memory per GPU, per phase
    terms = list(dict.fromkeys(k for mp in lay.memory for k in mp.terms))
    rows = [[term, *(_gib(mp.terms.get(term, 0)) for mp in lay.memory)] for term in terms]
    rows.append(["total", *(_gib(mp.total_bytes) for mp in lay.memory)])
    seq = lay.memory[0].sequence
    source = "the manifest's longest" if d.longest_seconds is not None else "data.max_duration"
    slowest = min([1.0, *r.augment.speed_factors])
    if slowest < 1:
        source += f" ÷ speed factor {slowest:g}"
    clip = (f"longest clip {seq.seconds:.1f} s ({source}): {seq.audio_tokens:,} audio + {seq.text_tokens:,} text "
            "tokens")
    gc = "on" if t.gradient_checkpointing else "off"
    out += ["", f"Memory per GPU (micro-batch {t.micro_batch}, {lay.world_size} GPU(s), {clip}; gradient "
                f"checkpointing {gc})",
            *_table(["", *(p.name for p in m.phases)], rows, right=set(range(1, len(m.phases) + 1)))]
    limit = f"fits {hw.gpu_memory_gib:g} GiB" if hw.gpu_memory_gib else "fits"
    for p, mp in zip(m.phases, lay.memory, strict=True):
        out.append(f"  {limit} ({p.name}): {_fit_text(mp, lay)}")

    # Data, steps, time, cost
    out += ["", "Steps, time and cost"]
    if d.source == "manifest":
        skipped = f"; {d.skipped:,} outside {r.data.min_duration:g}..{r.data.max_duration:g} s skipped" if (
            d.skipped) else ""
        out.append(f"  data        {d.manifest}: {d.clips:,} clips, {d.audio_hours:,.1f} h of audio{skipped}")
    elif d.source == "samples":
        hours = f", {d.audio_hours:,.1f} h of audio" if d.audio_hours else ""
        out.append(f"  data        {d.clips:,} samples per epoch (--samples){hours}")
    else:
        out.append("  data        unknown: give --samples N or --manifest PATH")
    if lay.divisible:
        out.append(f"  batch       micro {t.micro_batch} × {lay.world_size} GPU(s) × accumulation {lay.accumulation} "
                   f"= effective {t.effective_batch}")
    else:
        out.append(f"  batch       NOT RUNNABLE: effective {t.effective_batch} is not a multiple of micro "
                   f"{t.micro_batch} × {lay.world_size} GPU(s)" + (
                       f"; micro-batch {lay.suggested_micro_batch} would be" if lay.suggested_micro_batch else ""))
    s = lay.steps
    if s is not None:
        kind = "" if lay.exact_count else " (estimated)"
        out.append(f"  steps       {s.steps_per_epoch:,} per epoch{kind} × {t.epochs} epochs → {s.total_steps:,} "
                   f"optimizer steps ({s.batches_per_rank:,} micro-batches per GPU per epoch)")
        first = 1
        for p, n in zip(r.unfreeze.phases, s.phase_steps, strict=True):
            out.append(f"              {p.name}: {n:,} steps" + (f", from step {first:,}" if n else ""))
            first += n
    else:
        out.append("  steps       unknown")
    tp = plan.throughput
    if tp.samples_per_s_per_gpu is None:
        out.append("  time        unknown (pass --throughput or --measure)")
        out.append("  cost        unknown (pass --throughput or --measure)")
    else:
        how = tp.detail or "given (--throughput)"
        out.append(f"  throughput  {tp.samples_per_s_per_gpu:,.2f} samples/s per GPU, {how}")
        if lay.hours is not None:
            eff = ddp_efficiency(lay.world_size)
            scale = f" × {lay.world_size} GPUs × {eff:.0%} DDP efficiency (assumed)" if lay.world_size > 1 else ""
            out.append(f"  time        {_hours(lay.hours)} h wall clock{scale}; {_hours(lay.gpu_hours)} GPU-hours")
            out.append(f"  cost        {_money(lay.cost_usd)}" + (
                f" at ${hw.price_per_gpu_hour:,.2f} per GPU-hour" if lay.cost_usd is not None
                else " (no price: --price or hardware.price_per_gpu_hour)"))

    # The GPU table
    rows = []
    for row in plan.table:
        mark = " ◀" if row is lay else ""
        accum = f"{row.micro_batch} × {row.accumulation}" if row.divisible else (
            f"{row.micro_batch} × ✗" + (f" (try {row.suggested_micro_batch})" if row.suggested_micro_batch else ""))
        fits = {True: "yes", False: "NO", None: "?"}[row.fits]
        if row.fits is False:
            largest = [mp.largest_micro_batch for mp in row.memory if mp.fits is False]
            fits += f" (micro {min(largest)} fits)" if all(largest) else " (not with micro 1)"
        rs = row.steps
        rows.append([f"{row.world_size}{mark}", accum, _gib(row.peak.total_bytes), fits,
                     _num(rs.steps_per_epoch if rs else None), _num(rs.total_steps if rs else None),
                     _hours(row.hours), _hours(row.gpu_hours), _money(row.cost_usd)])
    out += ["", f"Same effective batch ({t.effective_batch}) on {', '.join(str(n) for n in TABLE_GPUS)} GPUs "
                "(◀ this recipe; ✗ effective batch not a multiple of micro-batch × GPUs: the trainer refuses it)",
            *_table(["GPUs", "micro × accum", "memory/GPU", "fits", "steps/epoch", "steps", "hours", "GPU-hours",
                     "cost"], rows, right={2, 4, 5, 6, 7, 8})]

    notes = [*m.notes, *plan.notes]
    if notes:
        out += ["", "Notes", *(f"  - {n}" for n in notes)]
    return "\n".join(out)
