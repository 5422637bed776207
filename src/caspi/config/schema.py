"""The recipe's schema: frozen pydantic models, one per section, and the checks no single field can make.

The models are frozen: code reads a recipe, never edits it. Fields that later stages consume (audit scorers,
plan/doctor) are declared where their stage needs them; nothing here pretends a feature exists. `cross_checks`
returns every problem of a combination of fields, including what the model family allows (its language tags, its
longest clip), which is why config sits above `caspi.models` in the layering: the family is the one place those
facts live.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from caspi.errors import ConfigError
from caspi.models import get_family


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    family: Literal["qwen3_asr", "whisper"] = "qwen3_asr"
    name_or_path: str = "Qwen/Qwen3-ASR-1.7B-hf"  # hub id or local folder
    revision: str | None = None  # hub branch/tag/commit; resolved to a commit sha that run.json pins
    tiny: Literal["xs", "s"] | None = None  # build a tiny random model of the real architecture instead
    # The Round-1 model whose weights the run starts from: a Caspi run or checkpoint folder, an exported or other
    # from_pretrained folder (native, the original qwen-asr layout, an HF Trainer checkpoint-N/: converted), or a
    # hub id. Local weights are copied into RUN/base at the first start, so the run never needs the folder again.
    # None: start from name_or_path (or the tiny random model), which stay the architecture's base either way.
    init_from: str | None = Field(None, min_length=1)
    init_revision: str | None = Field(None, min_length=1)  # hub branch/tag/commit of a hub id init_from
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # weights dtype; features are cast to it
    # Qwen3-ASR: the tag in the assistant prefill `language Hebrew<asr_text>`; Whisper: a name or code from its
    # list ("Hebrew" or "he"), which picks the language token. Used in training and the in-training eval.
    language: str = "Hebrew"


class HardwareConfig(_Section):
    accelerator: Literal["cuda", "cpu"] = "cuda"
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)  # processes per node (torchrun --nproc_per_node); 1 on CPU
    gpu_type: str | None = None  # e.g. "A100-40GB", for plan/doctor and the run metadata
    gpu_memory_gib: float | None = Field(None, gt=0)  # per device; training warns when the device has less
    # USD per device (GPU, or the CPU instance) per hour; when set, training logs `gpu_hours` and `cost_usd` so far
    # in metrics.jsonl on any device (caspi.train.resources), and plan prices the run with it
    price_per_gpu_hour: float | None = Field(None, ge=0)
    # USD for the whole run, over every start; needs price_per_gpu_hour. Training warns at 80 % and at 100 % saves
    # and exits 4 (over_budget: stop) or warns once and goes on (continue). Both may change on a resume.
    budget_usd: float | None = Field(None, gt=0)
    over_budget: Literal["stop", "continue"] = "stop"

    # Fields a resume may change: they decide when the run stops, not what it computes (`Recipe.fingerprint`).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("budget_usd", "over_budget")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class DataConfig(_Section):
    train_manifest: str | None = None  # Lhotse CutSet .jsonl.gz (the audit's cleaned manifest for real runs)
    eval_manifest: str | None = None
    # seconds; longer clips are rejected at import, skipped in training. ÷ the smallest speed factor it must fit
    # the model family's window (Whisper: 30 s), checked here.
    max_duration: float = Field(15.0, gt=0)
    min_duration: float = Field(0.0, ge=0)  # seconds
    num_workers: int = Field(2, ge=0)  # DataLoader worker processes per rank

    def import_limits(self, max_duration: float | None = None,
                      min_duration: float | None = None) -> tuple[float, float]:
        """(max, min) seconds for `caspi import`: each limit given on the command line, else this section's."""
        return (self.max_duration if max_duration is None else max_duration,
                self.min_duration if min_duration is None else min_duration)


class SpecAugmentConfig(_Section):
    enabled: bool = True
    freq_masks: int = Field(2, ge=0)  # number of frequency masks
    max_freq_width: int = Field(27, ge=0)  # mel bins per frequency mask, at most
    time_masks: int = Field(10, ge=0)  # number of time masks
    max_time_width: float = Field(0.05, ge=0, le=1)  # fraction of the utterance per time mask, at most
    time_warp: bool = False


class AugmentConfig(_Section):
    speed_factors: list[float] = Field(default_factory=lambda: [0.9, 1.0, 1.1])  # [] or [1.0] disables
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()

    @model_validator(mode="after")
    def _positive_factors(self):
        bad = [f for f in self.speed_factors if not 0.5 <= f <= 2.0]
        if bad:
            raise ValueError(f"speed_factors must lie in [0.5, 2.0], got {bad}")
        return self


class TrainConfig(_Section):
    epochs: int = Field(5, ge=1)
    micro_batch: int = Field(2, ge=1)  # cuts per micro-batch per process (the sampler's max_cuts)
    effective_batch: int = Field(64, ge=1)  # cuts per optimizer step over all processes and accumulation
    max_batch_duration: float | None = Field(None, gt=0)  # seconds of padded audio per micro-batch; None: no cap
    num_buckets: int = Field(30, ge=1)  # duration buckets of the sampler
    seed: int = 42
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; a cap that ends a run early
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0)  # max global grad norm; None disables clipping
    warmup_steps: int = Field(100, ge=0)  # linear warmup at the start of each phase
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup, per phase
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype (on CPU: bf16 or fp32)
    gradient_checkpointing: bool = True
    ctc_aux_weight: float = Field(0.0, ge=0, lt=1)  # hybrid CTC/attention weight (REFERENCE.md); 0 disables
    max_bad_steps: int = Field(10, ge=1)  # consecutive NaN/inf-loss steps before the run stops
    log_every_steps: int = Field(10, ge=1)
    save_every_steps: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1)  # checkpoints kept besides the best-by-WER

    def grad_accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step, derived so the effective batch holds for any GPU count."""
        per_step = self.micro_batch * world_size
        if self.effective_batch % per_step:
            raise ConfigError(
                f"train.effective_batch: {self.effective_batch} is not a multiple of micro_batch × world_size "
                f"({self.micro_batch} × {world_size} = {per_step})"
            )
        return self.effective_batch // per_step


class GroupSpec(_Section):
    """A parameter group: a named part of the model (projector, lm_head, ...) or its top layers."""

    top: int | None = Field(None, ge=1)  # the last N layers of a layered group (scaled to the model's depth)
    bottom: int | None = Field(None, ge=1)  # the first N layers of a layered group
    layers: list[int] | None = None  # explicit layer indices of a layered group
    regex: str | None = None  # a custom group: full parameter names matching this regex (re.match)

    def options(self) -> dict:
        """The spec as `caspi.models.unfreeze.trainable_names` takes it."""
        return self.model_dump(exclude_none=True)


class PhaseConfig(_Section):
    name: str
    start_epoch: int = Field(ge=1)  # 1-based epoch at which this phase begins
    lr: dict[str, float]  # group → peak learning rate; exactly the groups trained in this phase


def _default_groups() -> dict[str, GroupSpec]:
    return {
        "projector": GroupSpec(),
        "lm_head": GroupSpec(),
        "llm_top": GroupSpec(top=12),
        "audio_top": GroupSpec(top=8),
    }


class UnfreezeConfig(_Section):
    groups: dict[str, GroupSpec] = Field(default_factory=_default_groups)
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [PhaseConfig(name="full", start_epoch=1, lr={"projector": 1e-4})]
    )


class LoraConfig(_Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # Restricted to the LLM: a plain q_proj/... list also hits the audio encoder's attention (REFERENCE.md).
    target_regex: str = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"


class EvalConfig(_Section):
    every_steps: int = Field(500, ge=1)  # periodic WER/CER during training
    samples: int = Field(100, ge=1)  # fixed eval subset size during training
    normaliser: Literal["scoring", "leaderboard"] = "scoring"  # caspi.data.text form used for WER/CER
    num_beams: int = Field(1, ge=1)  # 1 = greedy; the leaderboard decodes with 5 (~cost in benchmarks/RESULTS.md)
    max_new_tokens: int = Field(256, ge=1)  # per clip, or per chunk of a long recording
    batch_size: int = Field(8, ge=1)  # clips (or chunks of long recordings) per generate call
    # Long recordings (caspi.longform; `caspi eval`, `compare --manifest`, the audit's asr scorer). A clip up to
    # chunk_seconds is decoded whole, as before; a longer one is cut at silero-vad silences into chunks of at most
    # chunk_seconds, or, where no silence lies within that, up to max_chunk_seconds; with no silence even there,
    # it is cut at max_chunk_seconds with chunk_overlap_seconds of overlap and the words the seam repeats dropped.
    # Whisper takes at most 30 s (a larger cap is an error when decoding with it). These keys and the two below
    # change decoding only; a run started before they existed still resumes (fields added at their defaults leave
    # its fingerprint alone: caspi.train.state.added_at_default).
    chunk_seconds: float = Field(30.0, gt=0)  # a chunk's target longest length, seconds
    max_chunk_seconds: float = Field(30.0, gt=0)  # hard cap, seconds (≥ chunk_seconds)
    chunk_overlap_seconds: float = Field(1.0, ge=0)  # overlap at a cut with no silence, seconds (< chunk_seconds / 2)
    # Repetition guard, passed to `generate`: 0 / 1.0 are off (the defaults: in-training evals and goldens
    # unchanged). no_repeat_ngram_size bans any token n-gram from appearing twice (it is in tokens, not words: a
    # small n also bans honest repeats such as a word said twice); repetition_penalty > 1 divides the logit of
    # every token already written (1.1-1.3 is the usual range).
    no_repeat_ngram_size: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    # A hypothesis (each chunk of a long one) is flagged as a loop when one n-gram of 1..loop_max_ngram words
    # occurs at least loop_min_repeats times and those occurrences cover at least loop_min_share of its words:
    # the known failure of speech-LLMs on long audio is one word or phrase written until max_new_tokens, which
    # fills most of the hypothesis, while natural speech repeats function words but not one phrase 4 times over
    # half of a sentence. See `caspi.longform.is_loop`.
    loop_max_ngram: int = Field(4, ge=1)
    loop_min_repeats: int = Field(4, ge=2)
    loop_min_share: float = Field(0.5, gt=0, le=1)

    def chunk_cap_problem(self, family: str, window_s: float | None) -> str | None:
        """Why `max_chunk_seconds` does not fit a model family that takes at most `window_s` seconds of audio (None:
        no fixed window), or None when it fits. Checked when a recipe loads (`_family_checks`) and when a model of
        whatever family decodes long recordings (`caspi.longform.chunk_limits`)."""
        if window_s is None or self.max_chunk_seconds <= window_s:
            return None
        return (f"eval.max_chunk_seconds: {self.max_chunk_seconds:g} s is longer than the {family} family takes "
                f"({window_s:g} s); set it and eval.chunk_seconds to at most {window_s:g}")

    @model_validator(mode="after")
    def _chunk_lengths(self):
        if self.chunk_seconds > self.max_chunk_seconds:
            raise ValueError(f"chunk_seconds ({self.chunk_seconds:g} s) must not exceed max_chunk_seconds "
                             f"({self.max_chunk_seconds:g} s), the hard cap")
        if self.chunk_overlap_seconds >= self.chunk_seconds / 2:
            raise ValueError(f"chunk_overlap_seconds ({self.chunk_overlap_seconds:g} s) must be under half of "
                             f"chunk_seconds ({self.chunk_seconds:g} s)")
        return self


class TextScorerConfig(_Section):
    """Model-free transcript checks: empty after normalisation, or mostly Latin script (not Hebrew)."""

    enabled: bool = True
    max_latin_share: float = Field(0.3, ge=0, le=1)  # share of letters that are Latin, above which it is flagged


class RateScorerConfig(_Section):
    """A clip's duration against the seconds its transcript should take: per domain, a robust fit of duration ≈
    a + b·letters + c·pauses, and the robust z of expected / actual seconds (`caspi.audit.scorers.RateScorer`)."""

    enabled: bool = True
    # Robust z-score (MAD × 1.4826, widened for small references) beyond which a sample is flagged: the textbook 3,
    # not tuned. On the demo corpus (the saved Round 1 data of seeds 0-2, 3,312 clean clips, issue #16) the rate
    # scorer alone flagged no clean clip, 45 of 48 half-cut transcripts, all 48 half-cut audio clips and 42 of 48
    # transcripts with appended words (characters per second against the median: 16 clean, 47, 48, 43).
    max_abs_z: float = Field(3.0, gt=0)
    # A domain with fewer clips (or a single letter count) uses the fit of all samples and is compared with the
    # whole audited set; when no domain has this many: characters per second against the median, as before.
    min_domain_samples: int = Field(20, ge=3)


class VadScorerConfig(_Section):
    """silero-vad speech activity: silence/noise-only audio, and transcripts longer than the speech can hold."""

    enabled: bool = True
    threshold: float = Field(0.5, gt=0, lt=1)  # speech probability that makes a speech segment
    # no_speech when the clip's highest window probability stays below this. Measured on the demo corpus: planted
    # silence/noise peaks at ≤ 0.062, while the clean clips in which silero finds no segment still peak ≥ 0.34.
    max_prob_floor: float = Field(0.2, ge=0, le=1)
    min_speech_s: float = Field(0.0, ge=0)  # also no_speech below this many seconds in segments (0: off)
    min_speech_coverage: float = Field(0.0, ge=0, le=1)  # also no_speech below this share of the clip (0: off)
    # Robust z of characters per speech second (per domain) beyond which text and speech disagree; None: off.
    # Off by default: silero under-detects espeak speech, so the ratio has a long tail (at 3.5, 107 false alarms
    # in 1,104 clean synthetic clips); worth trying on real recordings.
    max_abs_z: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)


class CtcScorerConfig(_Section):
    """CTC forced alignment with any AutoModelForCTC (e.g. MMS with its Hebrew adapter)."""

    enabled: bool = False
    model: str = "facebook/mms-1b-all"  # hub id or local folder
    revision: str | None = None
    target_lang: str | None = "heb"  # MMS adapter; None for a single-language CTC model
    confidence: float = Field(0.5, gt=0, lt=1)  # a character counts as aligned above this posterior
    min_coverage: float = Field(0.5, ge=0, le=1)  # share of aligned characters below this → low_alignment
    batch_size: int = Field(8, ge=1)


class AsrScorerConfig(_Section):
    """CER between the transcript and a model's hypothesis (the base model, or a round-1 run / export)."""

    enabled: bool = False
    model: str | None = None  # a Caspi run folder or checkpoint, an exported folder, or a hub id
    max_cer: float = Field(0.75, gt=0)  # above this → asr_mismatch (wrong transcript or language)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(128, ge=1)


class LossScorerConfig(_Section):
    """Teacher-forced loss of the claimed transcript under a model (in Round 2: the Round-1 model), per token, against
    its domain's median: one forward pass a clip, no generation; sees wrong transcripts where the model knows the
    sound, and the report says which domains those are (`caspi.audit.scorers.LossScorer`)."""

    enabled: bool = False
    model: str | None = None  # a Caspi run folder or checkpoint, an exported folder, or a hub id
    # Robust z of the loss above which a sample is flagged loss_outlier: one-sided, against the domain's median and
    # upper semi-MAD (× 1.4826), widened for small domains as the rate scorer's is. 2.5 measured with studio-only
    # Round 1 models (benchmarks/bench_audit_model.py): at studio CER 0.19 every studio wrong transcript caught for
    # 2 false alarms in 267 clean clips (0 at 3.0); at CER 0.50, 4 of 6 caught and none at 3.0.
    max_z: float = Field(2.5, gt=0)
    min_domain_samples: int = Field(20, ge=3)  # smaller domains are compared with the whole audited set
    # Share of swapped transcripts (another sample's text on a domain's audio) the flag would catch, below which the
    # scorer "cannot see" the domain: it reports so and flags nothing there.
    min_visibility: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(16, ge=1)  # clips per forward pass

    @model_validator(mode="after")
    def _has_model(self):
        if self.enabled and not self.model:
            raise ValueError("model: give the model that reads the transcripts (a Caspi run folder, an exported "
                             "folder or a hub id), or set enabled: false")
        return self


class Qwen3AlignerConfig(_Section):
    """Qwen3-ForcedAligner-0.6B: only for its 11 languages; Hebrew is not one of them."""

    enabled: bool = False
    # Hub id or local folder in transformers' native layout (`Qwen3ASRForTokenClassification`); the original
    # `Qwen/Qwen3-ForcedAligner-0.6B` (nested `thinker_config`, for the qwen-asr package) is refused on load.
    model: str = "Qwen/Qwen3-ForcedAligner-0.6B-hf"
    revision: str | None = None  # hub revision (commit/tag); None: the default branch
    language: str = "Hebrew"  # a full name from the aligner's list (e.g. "English"); Hebrew is refused
    min_coverage: float = Field(0.5, ge=0, le=1)  # share of placed words below this → aligner_low_coverage
    batch_size: int = Field(8, ge=1)  # clips per forward pass


class ScorersConfig(_Section):
    text: TextScorerConfig = TextScorerConfig()
    rate: RateScorerConfig = RateScorerConfig()
    vad: VadScorerConfig = VadScorerConfig()
    ctc: CtcScorerConfig = CtcScorerConfig()
    asr: AsrScorerConfig = AsrScorerConfig()
    loss: LossScorerConfig = LossScorerConfig()
    qwen3_aligner: Qwen3AlignerConfig = Qwen3AlignerConfig()


class AuditConfig(_Section):
    sample_fraction: float = Field(0.10, gt=0, le=1)  # share of the manifest audited (stratified by domain)
    seed: int = 0
    # Sample shares by domain group; None: proportional to each domain's size, or seed 001's 40 % noisy / 40 %
    # clean / 20 % long tail when every domain name says which it is. Keys are domain names or "*" (the rest).
    domain_shares: dict[str, float] | None = None
    proceed_below: float = Field(10.0, ge=0, le=100)  # % low-quality: below → PROCEED
    stop_above: float = Field(15.0, ge=0, le=100)  # % low-quality: above → STOP; between → CAUTION
    workers: int = Field(2, ge=1)  # audio decoding processes
    # all: score every sample of the manifest with the cheap scorers (text, rate, vad) and write cleaned.jsonl.gz
    # without every flagged sample; none: write no cleaned manifest (the gate then accepts only the audited one).
    clean: Literal["all", "none"] = "all"
    scorers: ScorersConfig = ScorersConfig()

    @model_validator(mode="after")
    def _ordered(self):
        if self.domain_shares is not None:
            bad = {k: v for k, v in self.domain_shares.items() if not v > 0}
            if bad or not self.domain_shares:
                raise ValueError(f"domain_shares must be a non-empty mapping of positive shares, got {bad or {}}")
        if self.proceed_below > self.stop_above:
            raise ValueError(f"proceed_below ({self.proceed_below}) must be <= stop_above ({self.stop_above})")
        return self


class GateConfig(_Section):
    report: str | None = None  # the Phase 0 alignment_report.json that training must check; None: no gate


class TrackingConfig(_Section):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "caspi"


# SLURM's --time forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds (sbatch(1)).
_SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                         r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")  # sbatch --mem: a size per node, megabytes without a unit; 0: all of it
# sbatch options `caspi slurm` writes itself (`caspi.slurm`): in slurm.extra they would contradict the script.
_SBATCH_OWN = {
    "--nodes": "hardware.nodes (or --nodes)", "-N": "hardware.nodes (or --nodes)",
    "--ntasks": "caspi slurm (one launcher task per node)", "-n": "caspi slurm (one launcher task per node)",
    "--ntasks-per-node": "caspi slurm (one launcher task per node)",
    "--gres": "hardware.gpus_per_node (or --gpus-per-node)", "--gpus": "hardware.gpus_per_node (or --gpus-per-node)",
    "-G": "hardware.gpus_per_node (or --gpus-per-node)",
    "--gpus-per-node": "hardware.gpus_per_node (or --gpus-per-node)",
    "--partition": "slurm.partition (or --partition)", "-p": "slurm.partition (or --partition)",
    "--account": "slurm.account (or --account)", "-A": "slurm.account (or --account)",
    "--time": "slurm.time (or --time)", "-t": "slurm.time (or --time)",
    "--cpus-per-task": "slurm.cpus_per_task", "-c": "slurm.cpus_per_task", "--mem": "slurm.mem",
    "--signal": "slurm.grace_seconds", "--requeue": "caspi slurm (the job requeues itself)",
    "--no-requeue": "caspi slurm (the job requeues itself)", "--open-mode": "caspi slurm (the log is appended)",
    "--output": "caspi slurm (RUN/slurm-%j.log)", "-o": "caspi slurm (RUN/slurm-%j.log)",
    "--error": "caspi slurm (RUN/slurm-%j.log)", "-e": "caspi slurm (RUN/slurm-%j.log)",
}


def slurm_time_seconds(text: str) -> int | None:
    """Seconds of a SLURM --time value ("90", "2:00:00", "1-12", "3-00:00:00"); None for UNLIMITED / INFINITE.
    ValueError for anything else."""
    if text.strip().upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _SLURM_TIME.match(text.strip())
    if m is None:
        raise ValueError(f"time: {text!r} is not a SLURM time limit; use minutes (\"90\"), \"HH:MM:SS\", \"D-HH\", "
                         "\"D-HH:MM\", \"D-HH:MM:SS\" or UNLIMITED")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "d" in g:
        return ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "c" in g:  # hours:minutes:seconds
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g.get("b", 0)  # minutes[:seconds]


class SlurmConfig(_Section):
    """The sbatch script's settings besides the hardware block (`caspi slurm`, `caspi.slurm`); None leaves each to
    the cluster's default. Where and how long a job runs, not what it computes: never part of the fingerprint."""

    partition: str | None = Field(None, min_length=1)
    account: str | None = Field(None, min_length=1)
    time: str | None = None  # --time: "90" (minutes), "HH:MM:SS", "D-HH:MM:SS", UNLIMITED
    # --signal=B:USR1@grace: seconds before the time limit at which the job shell is warned; the trainer saves,
    # requeues the job and exits. Must cover one checkpoint save; SLURM may send it up to 60 s early.
    grace_seconds: int = Field(120, ge=10, le=65535)
    cpus_per_task: int | None = Field(None, ge=1)  # CPUs per node: the launcher task, its trainers and loaders
    mem: str | None = None  # memory per node: "200G", "0" (all of it); megabytes without a unit
    setup: list[str] = Field(default_factory=list)  # shell lines run first, e.g. "module load cuda/12.4"
    extra: list[str] = Field(default_factory=list)  # more #SBATCH options, e.g. "--qos=high", "--constraint=a100"
    python: str | None = Field(None, min_length=1)  # the interpreter on the nodes; None: the one writing the script

    @field_validator("partition", "account", "time", "mem", mode="before")
    @classmethod
    def _number_as_text(cls, value):
        """YAML reads `time: 90`, `mem: 0` or a numeric account as numbers; sbatch takes them as text."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def problems(self) -> list[str]:
        """Every value sbatch would refuse or that contradicts the script, as "slurm.<field>: ..." lines
        (`cross_checks` reports them with the recipe's; `caspi.slurm` checks the flags' values the same way)."""
        problems = []
        limit = None
        if self.time is not None:
            try:
                limit = slurm_time_seconds(self.time)
            except ValueError as exc:
                problems.append(f"slurm.{exc}")
        if limit is not None and self.grace_seconds >= limit:
            problems.append(f"slurm.grace_seconds: {self.grace_seconds} s is not shorter than slurm.time "
                            f"{self.time!r} ({limit} s): the job would be warned before it starts")
        if self.mem is not None and not _SLURM_MEM.match(self.mem):
            problems.append(f"slurm.mem: {self.mem!r} is not a size per node; use e.g. \"200G\", \"64000\" (MB) or "
                            "\"0\" (all of it)")
        for i, line in enumerate(self.extra):
            option = re.split(r"[=\s]", line, maxsplit=1)[0]
            if not line.startswith("-") or "\n" in line:
                problems.append(f"slurm.extra.{i}: {line!r} is not one sbatch option (e.g. \"--qos=high\")")
            elif option in _SBATCH_OWN:
                problems.append(f"slurm.extra.{i}: {option} is set by {_SBATCH_OWN[option]}")
        for i, line in enumerate(self.setup):
            if "\n" in line or not line.strip():
                problems.append(f"slurm.setup.{i}: {line!r}: give one non-empty shell line per item")
        for name in ("partition", "account", "python"):
            value = getattr(self, name)
            if value is not None and (value != value.strip() or any(c in value for c in "\n\r")):
                problems.append(f"slurm.{name}: {value!r} has spaces or line breaks around it")
        return problems


class Recipe(_Section):
    name: str
    description: str = ""
    model: ModelConfig = ModelConfig()
    hardware: HardwareConfig = HardwareConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    unfreeze: UnfreezeConfig = UnfreezeConfig()
    lora: LoraConfig = LoraConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    audit: AuditConfig = AuditConfig()
    gate: GateConfig = GateConfig()
    tracking: TrackingConfig = TrackingConfig()
    slurm: SlurmConfig = SlurmConfig()

    @property
    def grad_accumulation(self) -> int:
        return self.train.grad_accumulation(self.hardware.world_size)

    def phase_group_specs(self, phase: PhaseConfig) -> dict[str, dict]:
        """`{group: options}` of the groups a phase trains, as `caspi.models.unfreeze.trainable_names` takes it."""
        return {group: self.unfreeze.groups[group].options() for group in phase.lr}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self, without: tuple[str, ...] | list[str] = ()) -> str:
        """sha256 of the resolved recipe: a resumed run must carry the same one. `without`: dotted fields left out,
        as a Caspi that did not have them yet computed it (`caspi.train.state.added_at_default`). The budget
        (`HardwareConfig.RESUMABLE`) is always left out: raising it is how a run stopped by it goes on. The slurm
        section counts at its defaults, whatever it holds: a requeued or resubmitted job may change its partition or
        time limit (its defaults, not nothing, so that fingerprints of runs started before it existed still match)."""
        data = self.to_dict()
        data["slurm"] = SlurmConfig().model_dump(mode="json")
        for dotted in dict.fromkeys([*without, *(f"hardware.{key}" for key in HardwareConfig.RESUMABLE)]):
            *path, last = dotted.split(".")
            node = data
            for part in path:
                node = node[part]
            del node[last]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cross_checks(recipe: Recipe) -> list[str]:
    """Combinations no single field can check. Returns every problem, not just the first."""
    problems: list[str] = []
    t, hw = recipe.train, recipe.hardware
    try:
        t.grad_accumulation(hw.world_size)
    except ConfigError as exc:
        problems.append(str(exc))
    if hw.budget_usd is not None and hw.price_per_gpu_hour is None:
        problems.append(f"hardware.budget_usd: a budget (${hw.budget_usd:g}) needs hardware.price_per_gpu_hour "
                        "(USD per GPU per hour) to count the cost against")
    if recipe.data.min_duration >= recipe.data.max_duration:
        problems.append(
            f"data.min_duration: {recipe.data.min_duration} s must be below data.max_duration "
            f"({recipe.data.max_duration} s)"
        )
    if t.max_batch_duration is not None and t.max_batch_duration < recipe.data.max_duration:
        problems.append(
            f"train.max_batch_duration: {t.max_batch_duration} s cannot hold one clip of data.max_duration "
            f"({recipe.data.max_duration} s)"
        )
    phases = recipe.unfreeze.phases
    if not phases:
        problems.append("unfreeze.phases: at least one phase is required")
    else:
        if phases[0].start_epoch != 1:
            problems.append(f"unfreeze.phases.0.start_epoch: the first phase must start at epoch 1, got "
                            f"{phases[0].start_epoch}")
        for i, (prev, cur) in enumerate(zip(phases, phases[1:]), start=1):
            if cur.start_epoch <= prev.start_epoch:
                problems.append(f"unfreeze.phases.{i}.start_epoch: {cur.start_epoch} must be after the previous "
                                f"phase's ({prev.start_epoch})")
        names = [p.name for p in phases]
        for name in {n for n in names if names.count(n) > 1}:
            problems.append(f"unfreeze.phases: phase name {name!r} is used more than once")
    known = set(recipe.unfreeze.groups)
    for i, phase in enumerate(phases):
        if phase.start_epoch > t.epochs:
            problems.append(f"unfreeze.phases.{i}.start_epoch: {phase.start_epoch} is after the last epoch "
                            f"(train.epochs = {t.epochs})")
        if not phase.lr:
            problems.append(f"unfreeze.phases.{i}.lr: a phase must train at least one group")
        for group, lr in phase.lr.items():
            if not lr > 0:
                problems.append(f"unfreeze.phases.{i}.lr.{group}: learning rate must be > 0, got {lr}")
            if group not in known:
                problems.append(f"unfreeze.phases.{i}.lr.{group}: unknown group; defined in unfreeze.groups: "
                                f"{', '.join(sorted(known))}")
    for name, spec in recipe.unfreeze.groups.items():
        given = [k for k in ("top", "bottom", "layers", "regex") if getattr(spec, k) is not None]
        if len(given) > 1:
            problems.append(f"unfreeze.groups.{name}: give at most one of top, bottom, layers, regex; got "
                            f"{', '.join(given)}")
    if hw.accelerator == "cpu" and t.precision == "fp16":
        problems.append("train.precision: fp16 autocast needs CUDA; use fp32 or bf16 with hardware.accelerator=cpu")
    if recipe.model.init_revision is not None and recipe.model.init_from is None:
        problems.append(f"model.init_revision: {recipe.model.init_revision!r} is the hub revision of "
                        "model.init_from, which is not set; set model.init_from to the Round-1 hub id, or drop "
                        "model.init_revision (model.revision is the architecture base's)")
    if recipe.model.tiny is None and recipe.model.family == "whisper" and "Qwen" in recipe.model.name_or_path:
        problems.append(f"model.name_or_path: {recipe.model.name_or_path!r} is a Qwen3-ASR model but "
                        "model.family is whisper")
    problems += _family_checks(recipe)
    problems += recipe.slurm.problems()
    return problems


def _family_checks(recipe: Recipe) -> list[str]:
    """What the model family allows: its language tag, its longest clip after the slowest speed perturbation, and
    its longest eval chunk.

    A factor f below 1 stretches a clip of d seconds to d / f seconds, so the longest training clip is
    `data.max_duration / min(1, speed factors)`; Whisper crashes mid-run on a clip past its 30 s window. A long
    recording is decoded in chunks of at most `eval.max_chunk_seconds` (`caspi.longform`), which must fit the window
    too; `caspi eval --model` of another family than the recipe's is checked again when it decodes.
    """
    family = get_family(recipe.model.family)
    problems = []
    try:
        family.language_tag(recipe.model.language)
    except ConfigError as exc:
        problems.append(str(exc))
    limit = family.max_audio_seconds
    if limit is not None:
        max_duration = recipe.data.max_duration
        slowest = min([1.0, *recipe.augment.speed_factors])
        longest = max_duration / slowest  # seconds
        if longest > limit * (1 + 1e-9):  # tolerance: 27 / 0.9 may round above 30
            allowed = math.floor(limit * slowest * 100) / 100  # seconds, rounded down to 10 ms
            problems.append(
                f"data.max_duration: {max_duration:g} s ÷ the smallest of augment.speed_factors ({slowest:g}) is "
                f"{longest:.2f} s of audio, more than {recipe.model.family} takes ({limit:g} s); set "
                f"data.max_duration to at most {allowed:g} s, or drop the factors below {max_duration / limit:.3g} "
                "from augment.speed_factors"
            )
    chunk_problem = recipe.eval.chunk_cap_problem(recipe.model.family, limit)
    if chunk_problem:
        problems.append(chunk_problem)
    return problems
