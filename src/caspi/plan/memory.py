"""Memory per GPU per unfreeze phase: what Caspi's trainer holds, term by term, in bytes.

    mem = memory_plan(recipe, model_plan, phase, micro_batch=2, world_size=2, gpu_memory_gib=40)
    mem.terms          # {"weights": bytes, "gradients": ..., "activations": ..., "logits": ..., ...}
    mem.total_gib, mem.fits, mem.margin_gib, mem.largest_micro_batch
    mem.other          # the same with gradient checkpointing switched the other way

The model is of THIS trainer (src/caspi/train/loop.py), not of training in general:

* weights: the model is loaded in `model.dtype` (bf16: 2 bytes). Every parameter trained in this phase or an
  earlier one is upcast in place to a float32 master (`TrainingRun._float32_masters`: 4 bytes) and stays so; peft's
  LoRA adapters are float32 (peft's `autocast_adapter_dtype`, checked on a bf16 model). There is no separate
  master copy: the optimizer updates those float32 parameters directly.
* gradients: one per trainable parameter in its dtype (float32: 4 bytes), alive from the first backward of a
  step to `zero_grad(set_to_none=True)` after the update, so at the peak.
* optimizer: torch AdamW keeps exp_avg and exp_avg_sq like the parameter (float32): 8 bytes per trainable
  parameter (`torch.optim.AdamW`, `_init_group`: `torch.zeros_like(p)` twice). Its foreach step makes one more
  float32 temporary of every state (`torch._foreach_sqrt(exp_avg_sqs)` in `_multi_tensor_adam`): 4 bytes per
  trainable parameter while activations are already freed; counted only where it exceeds the forward/backward peak.
* ddp: under DistributedDataParallel (world > 1) the reducer keeps flat gradient buckets beside `.grad`, since
  `caspi.train.distributed.wrap` leaves `gradient_as_bucket_view` False (PyTorch DDP docs: setting it True
  "can reduce peak memory usage, where the saved memory size will be equal to the total gradients size"): another
  4 bytes per trainable parameter.
* activations: the tensors autograd saves for backward, counted per op of the real modules (Qwen3 decoder layer,
  Qwen3-ASR/Whisper encoder layer, LoRA, the conv front end, the projector), per token, in the dtypes autocast
  gives them. The method is Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (sec. 4.1: sum the inputs each op keeps), whose GPT layer totals s·b·h·(34 + 5·a·s/h) bytes in 16 bits;
  with SDPA's fused kernels the a·s² score term is not stored (only a log-sum-exp per head and row), and this
  architecture differs (SwiGLU MLP, grouped KV heads, RMSNorm on q and k, norms upcast to float32, no dropout), so
  the per-layer sum is written out below (`llm_layer_bytes`, `audio_layer_bytes`). Under autocast a linear whose
  input is float32 (a float32 norm output) keeps its own bf16 copy of it, one per consumer.
  Without checkpointing only layers at or above the lowest trainable one are recorded (`PhaseParams.grad_from`):
  below it no input or weight needs a gradient, so autograd saves nothing there. A frozen layer above it keeps
  less than a trained one (a linear with a frozen weight keeps no input). The same holds with checkpointing:
  `ModelFamily.enable_gradient_checkpointing` removes the hooks transformers adds to make every input embedding's
  output require grad, which would record everything from the audio conv front end on. Measured on a tiny model
  in tests/plan/test_memory.py (formula / measured 0.98–1.07).
* gradient checkpointing (non-reentrant, per encoder/decoder layer, `ModelFamily.enable_gradient_checkpointing`):
  each recorded layer keeps only its input hidden states; during backward one layer is recomputed at a time, so
  the largest layer's full activations come back once (Chen et al. 2016, "Training Deep Nets with Sublinear
  Memory Cost"). Everything outside the layers (front end, projector, final norm, LM head) is kept as without it.
* logits: Qwen3-ASR and Whisper compute logits at every position over the vocabulary (151,936 words for
  Qwen3-ASR): (B, L, V) in the compute dtype, held by the model output through backward; transformers'
  `ForCausalLMLoss` upcasts them (`logits.float()`) and cross-entropy keeps its float32 log-softmax; in backward
  the gradient of the loss and of the log-softmax (float32 each) exist together: c + 4 + 4 + 4 bytes per logit.
* autocast copies: under bf16/fp16 autocast a float32 trainable weight is cast once per forward (autocast's weight
  cache) and the bf16 copy is kept for backward: 2 bytes per trainable parameter; with checkpointing only those of
  the non-checkpointed modules (and one layer's) outlive the forward.
* ctc: with `train.ctc_aux_weight` > 0 a float32 Linear(H, V + 1) head (`caspi.models.ctc`) with its gradient and
  AdamW states (16 bytes per parameter), and its float32 logits and log-softmax over the audio tokens.
* overhead: the CUDA context, cuBLAS workspaces and NCCL buffers, which `torch.cuda.max_memory_allocated` does
  not see but the card's memory does (PyTorch "CUDA semantics", memory management: the context is not reported).

Sequence lengths (`sequence`): the longest clip (`data.max_duration` s unless given) at 100 mel frames/s; Qwen3-ASR
runs its conv front end on chunks of 100 frames (each → 13 audio tokens, REFERENCE.md "Inputs"), Whisper pads every
clip to its 30 s window (1500 encoder positions). The LLM/decoder sequence is a fixed prompt, the audio tokens
(Qwen3-ASR) and the transcript's tokens, by default from a speaking rate and a tokenizer rate (constants below).
Every clip of a micro-batch is taken at that length (the sampler buckets by duration, so the longest batch is that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from caspi.config import Recipe
from caspi.plan.params import ModelDims, ModelPlan, PhaseParams, where

GIB = 2**30
MARGIN = 0.10  # a plan fits when its total is at most (1 − MARGIN) of the card: allocator fragmentation, spikes
# CUDA context + cuBLAS/cuDNN workspaces + NCCL buffers: ~0.5–1 GiB on A100/H100 with torch 2.x (PyTorch "CUDA
# semantics" notes; the context alone is a few hundred MB). Invisible to max_memory_allocated.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
CHARS_PER_SECOND = 15.0  # Hebrew read/broadcast speech: ~2.5 words/s of ~5 letters plus a space
TOKENS_PER_CHAR = 0.5  # Qwen's byte-level BPE on unvocalised Hebrew: about two letters per token (assumed)
PROMPT_TOKENS = {"qwen3_asr": 20, "whisper": 4}  # chat template around the audio / Whisper's <|sot|> … prefix
MAX_MICRO_BATCH = 1024  # upper end of the largest-micro-batch search
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Sequence:
    """Lengths of the longest micro-batch row."""

    seconds: float
    mel_frames: int  # padded as the encoder needs (Qwen3-ASR: a multiple of 100; Whisper: 3000)
    chunks: int  # Qwen3-ASR conv chunks of 100 frames (Whisper: 1 window)
    audio_tokens: int  # encoder positions (packed, padding excluded, for Qwen3-ASR)
    text_tokens: int
    llm_tokens: int  # decoder positions: prompt + audio tokens (Qwen3-ASR) + text tokens


@dataclass
class MemoryPlan:
    """Bytes per GPU at the training peak of one phase; `terms` sum to `total_bytes`."""

    phase: str
    micro_batch: int
    world_size: int
    gradient_checkpointing: bool
    sequence: Sequence
    terms: dict[str, int]
    gpu_memory_gib: float | None
    largest_micro_batch: int | None = None  # the largest that fits (and divides the effective batch); None: unknown
    other: MemoryPlan | None = None  # the same with gradient checkpointing the other way
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.terms.values())

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def usable_gib(self) -> float | None:
        return None if self.gpu_memory_gib is None else self.gpu_memory_gib * (1 - MARGIN)

    @property
    def fits(self) -> bool | None:
        """Whether the total is within the card less the margin; None when the card's memory is unknown."""
        return None if self.usable_gib is None else self.total_gib <= self.usable_gib

    @property
    def margin_gib(self) -> float | None:
        """GiB left (negative: short) below the usable memory (card × (1 − MARGIN))."""
        return None if self.usable_gib is None else self.usable_gib - self.total_gib


# ---------------------------------------------------------------------------------------------------------------
# Lengths


def conv_tokens(frames: int) -> int:
    """Tokens out of three (k=3, s=2, p=1) convolutions over `frames` (Qwen3ASREncoder._post_cnn_length)."""
    for _ in range(3):
        frames = (frames - 1) // 2 + 1 if frames > 0 else 0
    return frames


def default_text_tokens(seconds: float) -> int:
    return math.ceil(seconds * CHARS_PER_SECOND * TOKENS_PER_CHAR)


def sequence(dims: ModelDims, seconds: float, text_tokens: int | None = None) -> Sequence:
    """The longest row's lengths for a clip of `seconds` (see the module docstring)."""
    text = default_text_tokens(seconds) if text_tokens is None else text_tokens
    prompt = PROMPT_TOKENS.get(dims.family, 20)
    if dims.audio_window_seconds is not None:  # Whisper: every clip is padded to the window
        frames = int(dims.audio_window_seconds * dims.mel_frames_per_second)
        audio = int(dims.audio_window_seconds * dims.audio_tokens_per_second)
        return Sequence(seconds, frames, 1, audio, text, prompt + text)
    frames = math.ceil(seconds * dims.mel_frames_per_second)  # real frames
    chunk = dims.chunk_frames
    chunks = math.ceil(frames / chunk)
    audio = (frames // chunk) * conv_tokens(chunk) + conv_tokens(frames % chunk)
    return Sequence(seconds, chunks * chunk, chunks, audio, text, prompt + audio + text)


# ---------------------------------------------------------------------------------------------------------------
# Saved activations per token of one layer (bytes). r: the residual stream's dtype; c: the compute dtype (autocast's,
# or the weights' without autocast); n: a norm's output dtype (float32 when its weight is a float32 master).


def _linear_inputs(consumers: int, in_dtype: int, c: int, d_in: int) -> int:
    """Inputs kept by `consumers` trainable linears reading one tensor of width `d_in`: shared when no cast is
    needed, else one autocast copy each (autocast does not cache casts of activations)."""
    return c * d_in if in_dtype == c else consumers * c * d_in


def llm_layer_bytes(dims: ModelDims, *, trains: bool, lora: str | None, r: int, c: int, lora_r: int = 0,
                    lora_dropout: bool = True, mask: int = 1) -> int:
    """Bytes per token a Qwen3 decoder layer (transformers' Qwen3DecoderLayer, SDPA) keeps for backward.

    `trains`: its own weights (norms, and the linears unless LoRA replaces them) need gradients; `lora`: None, or
    "frozen"/"trains" for adapters on its seven linears. Per op (h hidden, q = heads·head_dim, k = kv_heads·head_dim,
    I intermediate):
      RMSNorm ×2:      its float32 input (4h) always; the normalised tensor (r·h) when its weight trains
      q/k/v, gate/up:  their input in c when their weight trains (shared, or one autocast copy each)
      q_norm, k_norm:  4q + 4k float32 inputs; c·q + c·k normalised when their weights train
      SDPA:            q, k, v and the output in c (c·(2q + 2k)); the row log-sum-exp is negligible
      o_proj:          its input (c·q, the output made contiguous) when it trains
      SiLU, ×, down:   gate output (c·I), both factors (2c·I), down's input (c·I) when it trains
      LoRA per linear: dropout mask (`mask` bytes·d_in: CUDA's native_dropout keeps a bool mask, the CPU
                       kernel a float32 noise tensor) whenever recorded; the dropped input in c and the rank-r
                       activation when the adapters train
    """
    h, q, k, inter = dims.hidden, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.intermediate
    linears_train = trains and lora is None
    n = 4 if trains and c != 4 else r  # a float32 norm weight makes the norm's output float32
    total = 2 * 4 * h + 4 * q + 4 * k  # the four norms' float32 inputs
    total += c * (2 * q + 2 * k)  # SDPA: q, k, v, output
    total += 3 * c * inter  # SiLU input, both factors of the product
    if trains:
        total += 2 * r * h + c * (q + k)  # norms' normalised tensors (layer norms in r, q/k norms in c)
    if linears_train:
        total += _linear_inputs(3, n, c, h) + _linear_inputs(2, n, c, h)  # q/k/v and gate/up inputs
        total += c * q + c * inter  # o_proj and down_proj inputs
    if lora is not None:
        d_ins = [h, h, h, q, h, h, inter]  # q, k, v, o, gate, up, down
        total += mask * sum(d_ins) if lora_dropout else 0  # dropout masks
        if lora == "trains":
            total += c * sum(d_ins) + c * lora_r * len(d_ins)
    return total


def audio_layer_bytes(dims: ModelDims, *, trains: bool, r: int, c: int) -> int:
    """Bytes per token an encoder layer (Qwen3-ASR's / Whisper's: pre-LayerNorm, biased linears, GELU MLP) keeps:
      LayerNorm ×2:   its input, upcast to float32 under autocast (4d) or in r
      q/k/v, fc1:     their input in c when they train (one autocast copy each of the float32 LayerNorm output)
      SDPA:           q, k, v, output in c (4c·d); windowed, so no score matrix with fused kernels
      out_proj, fc2:  their inputs (c·d, c·F) when they train
      GELU:           its input (c·F)"""
    d, ffn = dims.audio_d_model, dims.audio_ffn
    ln = 4 if c != 4 else r  # layer_norm runs in float32 under autocast (autocast's fp32 op list)
    total = 2 * ln * d + 4 * c * d + c * ffn
    if trains:
        total += _linear_inputs(3, ln, c, d) + _linear_inputs(1, ln, c, d) + c * d + c * ffn
    return total


def frontend_bytes(dims: ModelDims, c: int, trains: bool = True) -> int:
    """Bytes per conv chunk the recorded conv front end keeps: each GELU's input and each conv's input (torch's
    convolution node keeps its input even when only the input needs a gradient, measured); the first conv's input
    (the features) and the final linear's input only when they train (`trains`). Qwen3-ASR: 3 stride-2 convs over
    (128 mels × 100 frames) with C channels, then a linear over C·16 features; Whisper: 2 convs over
    (mels × 3000 frames) of width d."""
    ch, mels, t = dims.audio_conv_channels, dims.num_mel_bins, dims.chunk_frames
    if dims.family == "whisper":
        return c * ((mels * t if trains else 0) + 2 * ch * t + (2 if trains else 1) * ch * (t // 2))
    total, f, frames = (c * mels * t if trains else 0), mels, t
    for stage in range(3):
        f, frames = (f + 1) // 2, (frames + 1) // 2
        # the conv's output kept by GELU; GELU's output by the next conv (or by conv_out, if that trains)
        total += (2 if trains or stage < 2 else 1) * c * ch * f * frames
    return total


# ---------------------------------------------------------------------------------------------------------------
# The plan


def _dtypes(recipe: Recipe) -> tuple[int, int]:
    """(weight bytes, compute bytes) as `caspi.train.resources.pick_device` chooses them, on CUDA and CPU alike."""
    w = DTYPE_BYTES[recipe.model.dtype]
    return w, {"bf16": 2, "fp16": 2, "fp32": w}[recipe.train.precision]  # fp16 on CPU is refused at load


def _trained_so_far(model_plan: ModelPlan, phase: PhaseParams) -> set[str]:
    names: set[str] = set()
    for p in model_plan.phases:
        names |= p.names
        if p.name == phase.name:
            break
    return names


def activation_terms(model_plan: ModelPlan, phase: PhaseParams, recipe: Recipe, *, micro_batch: int,
                     seq: Sequence, checkpointing: bool, with_parts: bool = False) -> dict:
    """{"activations", "logits", "autocast_copies", "ctc_activations"} bytes at the forward/backward peak; with
    `with_parts`, also "_parts": the layers' saved bytes without checkpointing ("kept"), their inputs ("inputs"),
    the largest one layer ("largest") and what lies outside the layers ("outside"), for tests."""
    dims, b = model_plan.dims, micro_batch
    w, c = _dtypes(recipe)
    lora_on = recipe.lora.enabled
    embed_trained = any(n.endswith("embed_tokens.weight") for n in _trained_so_far(model_plan, phase))
    r_llm = 4 if (w == 4 or embed_trained) else c  # float32 embeddings make the decoder's residual stream float32
    r_audio = c
    mask = 1 if recipe.hardware.accelerator == "cuda" else 4  # dropout mask bytes (see llm_layer_bytes)
    ta, tl = b * seq.audio_tokens, b * seq.llm_tokens  # tokens in the micro-batch

    grad_from = phase.grad_from
    kept, inputs, largest = 0, 0, 0  # all layers' saved bytes; their inputs only; the largest one layer
    for stack, n_layers, tokens, r in (("audio", dims.audio_layers, ta, r_audio), ("llm", dims.llm_layers, tl, r_llm)):
        start = grad_from.get(stack)
        if start is None:
            continue
        trained = set(phase.layers.get(stack, []))
        for i in range(start, n_layers):
            if stack == "audio":
                per_token = audio_layer_bytes(dims, trains=i in trained, r=r, c=c)
                width = dims.audio_d_model
            else:
                lora = None if not lora_on else ("trains" if i in trained else "frozen")
                per_token = llm_layer_bytes(dims, trains=i in trained, lora=lora, r=r, c=c, lora_r=recipe.lora.r,
                                            lora_dropout=recipe.lora.dropout > 0, mask=mask)
                width = dims.hidden
            kept += per_token * tokens
            inputs += r * width * tokens
            largest = max(largest, per_token * tokens)

    outside = 0
    if phase.audio_frontend_trains:
        outside += frontend_bytes(dims, c, trains=phase.audio_frontend_trains) * b * seq.chunks
    audio_recorded = grad_from.get("audio") is not None
    projector_trains = any("multi_modal_projector" in n for n in phase.names)
    if dims.family == "qwen3_asr":
        if audio_recorded:
            outside += 4 * dims.audio_d_model * ta  # ln_post's float32 input
        if projector_trains:
            outside += 3 * c * dims.audio_d_model * ta  # linear_1 input, GELU input, linear_2 input
        elif audio_recorded:
            outside += c * dims.audio_d_model * ta  # the GELU's input (frozen linears keep nothing)
    if grad_from.get("llm") is not None:
        outside += 4 * dims.hidden * tl  # the final norm's float32 input
    # The LM head's input, kept for its (tied) weight's gradient when this phase trains it; a frozen head keeps
    # nothing (the hidden states' gradient needs only the weight). Measured in tests/plan/test_memory.py.
    head_trains = any(n.endswith(("embed_tokens.weight", "lm_head.weight", "proj_out.weight")) for n in phase.names)
    if head_trains:
        outside += c * dims.hidden * tl

    # "copies_recomputed": with checkpointing, the autocast copies of the one layer backward recomputes
    parts = {"kept": kept, "inputs": inputs, "largest": largest, "outside": outside, "copies_recomputed": 0}
    layers = inputs + largest if checkpointing else kept
    # (B, L, V): logits held by the output (c), float32 log-softmax kept by cross-entropy (4), and in backward the
    # float32 gradients of the loss and of the log-softmax (4 + 4).
    logits = tl * dims.vocab * (c + 4 + 4 + 4)
    copies = 0
    if c < 4 and w < 4:  # autocast over float32 masters
        in_layers = phase.trainable - phase.outside_layers
        if checkpointing:
            per_layer = in_layers // max(1, sum(len(v) for v in phase.layers.values()))
            copies = 2 * (phase.outside_layers + per_layer)
        else:
            copies = 2 * phase.trainable
    elif c < 4:  # autocast over a float32 model: every weight backward multiplies by is cast, frozen ones too
        outside_w, layer_w = _float32_weights_on_gradient_path(model_plan, phase, checkpointing)
        copies = 2 * (outside_w + layer_w)
        parts["copies_recomputed"] = 2 * layer_w if checkpointing else 0
    ctc = 0
    if recipe.train.ctc_aux_weight > 0:
        # float32 logits, log-softmax (kept) and its gradient over (B, T_a, V + 1)
        ctc = ta * (dims.vocab + 1) * (4 + 4 + 4)
    return {"activations": layers + outside, "logits": logits, "autocast_copies": copies, "ctc_activations": ctc,
            **({"_parts": parts} if with_parts else {})}


def _is_matmul_weight(name: str) -> bool:
    """A Linear's or convolution's weight: what autocast casts (norms run in float32, embeddings are looked up)."""
    return name.endswith(".weight") and not any(k in name for k in ("norm", "embed", "ln_post", "positional"))


def _float32_weights_on_gradient_path(model_plan: ModelPlan, phase: PhaseParams,
                                      checkpointing: bool) -> tuple[int, int]:
    """(outside the layers, in the layers) parameters of the float32 matmul weights whose bf16 autocast copies
    backward keeps: those of the recorded layers (`grad_from` on; the gradient of their input needs them, trained
    or not), of the front end and the projector when they are on that path, and of the LM head (the tied one is the
    embedding matrix) when the decoder is. With checkpointing the layers' copies are made again in backward, one
    layer at a time: the largest layer's then. Measured under CPU autocast in tests/plan/test_memory.py."""
    g = phase.grad_from
    # The projector's copies are kept when the gradient comes up from the encoder or the projector itself trains.
    projector_on = g.get("audio") is not None or any(where(t)[0] == "audio_post" for t in phase.names)
    per_layer: dict[tuple[str, int], int] = {}
    outside = 0
    for name, n in model_plan.numel.items():
        if not _is_matmul_weight(name):
            continue
        part, i = where(name)
        if part in ("audio", "llm"):
            if g.get(part) is not None and i >= g[part]:
                per_layer[(part, i)] = per_layer.get((part, i), 0) + n
        elif part == "audio_pre":
            outside += n if phase.audio_frontend_trains else 0
        elif part == "audio_post":
            outside += n if projector_on else 0
        elif part == "llm_post":
            outside += n if g.get("llm") is not None else 0
    if model_plan.dims.tied_embeddings and g.get("llm") is not None:
        outside += next(n for name, n in model_plan.numel.items() if where(name)[0] == "llm_pre"
                        and name.endswith("embed_tokens.weight"))
    return outside, max(per_layer.values(), default=0) if checkpointing else sum(per_layer.values())


def memory_plan(recipe: Recipe, model_plan: ModelPlan, phase: PhaseParams, *, micro_batch: int, world_size: int,
                gpu_memory_gib: float | None, max_seconds: float | None = None, text_tokens: int | None = None,
                gradient_checkpointing: bool | None = None, _search: bool = True) -> MemoryPlan:
    """Bytes per GPU at the peak of a training step of `phase` (see the module docstring for every term).
    `gradient_checkpointing` None: as the recipe says; `.other` holds the opposite setting."""
    dims = model_plan.dims
    ckpt = recipe.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    seconds = recipe.data.max_duration if max_seconds is None else max_seconds
    seq = sequence(dims, seconds, text_tokens)
    w, c = _dtypes(recipe)
    trained = _trained_so_far(model_plan, phase)
    numel = model_plan.numel
    weights = sum(v * (4 if (name in trained or ".lora_" in name) else w) for name, v in numel.items())
    trainable = phase.trainable
    terms = {
        "weights": weights,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,  # AdamW exp_avg + exp_avg_sq, float32
        "ddp": 4 * trainable if world_size > 1 else 0,  # gradient buckets (gradient_as_bucket_view False)
    }
    if recipe.train.ctc_aux_weight > 0:
        head = (dims.hidden + 1) * (dims.vocab + 1)  # Linear(H, V + 1) with bias, float32
        terms["ctc_head"] = 16 * head  # weight 4 + gradient 4 + AdamW 8 bytes per parameter
    terms.update(activation_terms(model_plan, phase, recipe, micro_batch=micro_batch, seq=seq, checkpointing=ckpt))
    transient = terms["activations"] + terms["logits"] + terms["autocast_copies"] + terms["ctc_activations"]
    terms["optimizer_step"] = max(0, 4 * trainable - transient)  # foreach AdamW temporary, when it is the peak
    terms["overhead"] = CUDA_CONTEXT_BYTES if recipe.hardware.accelerator == "cuda" else 0
    plan = MemoryPlan(phase=phase.name, micro_batch=micro_batch, world_size=world_size,
                      gradient_checkpointing=ckpt, sequence=seq, terms=terms, gpu_memory_gib=gpu_memory_gib)
    if not _search:
        return plan
    kwargs = dict(world_size=world_size, gpu_memory_gib=gpu_memory_gib, max_seconds=seconds,
                  text_tokens=seq.text_tokens)
    plan.largest_micro_batch = largest_micro_batch(recipe, model_plan, phase, gradient_checkpointing=ckpt, **kwargs)
    plan.other = memory_plan(recipe, model_plan, phase, micro_batch=micro_batch, gradient_checkpointing=not ckpt,
                             _search=False, **kwargs)
    plan.other.largest_micro_batch = largest_micro_batch(recipe, model_plan, phase, gradient_checkpointing=not ckpt,
                                                         **kwargs)
    return plan


def largest_micro_batch(recipe: Recipe, model_plan: ModelPlan, phase: PhaseParams, *, world_size: int,
                        gpu_memory_gib: float | None, gradient_checkpointing: bool, max_seconds: float | None = None,
                        text_tokens: int | None = None) -> int | None:
    """The largest micro-batch that fits (memory grows with it, so a binary search) and keeps the effective batch
    by accumulation (effective_batch a multiple of micro-batch × world size, when any such size fits); None when
    the card's memory is unknown or one clip does not fit."""
    if gpu_memory_gib is None:
        return None

    def fits(b: int) -> bool:
        plan = memory_plan(recipe, model_plan, phase, micro_batch=b, world_size=world_size,
                           gpu_memory_gib=gpu_memory_gib, max_seconds=max_seconds, text_tokens=text_tokens,
                           gradient_checkpointing=gradient_checkpointing, _search=False)
        return bool(plan.fits)

    if not fits(1):
        return None
    lo, hi = 1, MAX_MICRO_BATCH
    while lo < hi:  # the largest b with fits(b)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    effective = recipe.train.effective_batch
    dividing = [b for b in range(lo, 0, -1) if effective % (b * world_size) == 0]
    return dividing[0] if dividing else lo
