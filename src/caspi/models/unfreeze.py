"""Which parameters train: named groups resolved to exact parameter names, a two-line applier, optimizer param
groups that survive a phase change, and LoRA restricted to the language decoder.

A group spec is data, e.g. from a recipe's unfreezing schedule:

    {"projector": {}, "llm_top": {"top": 12}, "audio_top": {"top": 8}, "lm_head": {}}

Group names come from the model's family (`family.param_groups(config)`, regexes over real parameter names) plus
`lora` (every LoRA adapter tensor). Layered groups take `{"top": N}` (the last N layers of however many the config
has), `{"bottom": N}`, `{"layers": [i, ...]}`, or `{}` (all layers).

    names = trainable_names(model, spec)          # {group: [param names]}, pure
    apply_trainable(model, names)                 # requires_grad_(name in names)
    print(group_table(model, names, lrs).render())
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, names, lrs, weight_decay=0.01))
    ...next phase...
    optimizer = rebuild_optimizer(optimizer, model, new_names, new_lrs, weight_decay=0.01)  # keeps AdamW state
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from caspi.errors import ConfigError
from caspi.models.families import GroupDef, base_model, family_of, layer_regex

LORA_GROUP = GroupDef("lora", r".*\.lora_", "LoRA adapter tensors (after apply_lora)")
LAYER_OPTIONS = ("top", "bottom", "layers")


def known_groups(model: torch.nn.Module) -> dict[str, GroupDef]:
    """Every group name a spec may use for this model: the family's groups plus `lora`."""
    groups = dict(family_of(base_model(model)).param_groups(base_model(model).config))
    groups[LORA_GROUP.name] = LORA_GROUP
    return groups


def tied_lm_head(model: torch.nn.Module) -> bool:
    """True when the output projection *is* the input embedding tensor (one Parameter, two names)."""
    base = base_model(model)
    out = base.get_output_embeddings()
    return out is not None and out.weight is base.get_input_embeddings().weight


def _embedding_name(model: torch.nn.Module) -> str:
    weight = base_model(model).get_input_embeddings().weight
    for name, param in model.named_parameters():
        if param is weight:
            return name
    raise AssertionError("input embedding weight is not among the model's parameters")


def _select_layers(group: GroupDef, options: Mapping[str, Any]) -> list[int]:
    n = group.num_layers
    assert n is not None
    chosen = [k for k in options if k in LAYER_OPTIONS]
    if group.requires and group.requires not in options:
        raise ConfigError(f"group {group.name!r} needs {{{group.requires!r}: N}}, got {dict(options)}")
    if len(chosen) > 1:
        raise ConfigError(f"group {group.name!r}: give one of {', '.join(LAYER_OPTIONS)}, not {', '.join(chosen)}")
    if not chosen:
        return list(range(n))
    key = chosen[0]
    value = options[key]
    if key in ("top", "bottom"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"group {group.name!r}: {key} must be a positive integer, got {value!r}")
        if value > n:
            raise ConfigError(f"group {group.name!r}: {key} {value} but the model has only {n} such layers")
        return list(range(n - value, n)) if key == "top" else list(range(value))
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(i, int) for i in value):
        raise ConfigError(f"group {group.name!r}: layers must be a non-empty list of indices, got {value!r}")
    bad = [i for i in value if not 0 <= i < n]
    if bad:
        raise ConfigError(f"group {group.name!r}: layer indices {bad} out of range; the model has layers 0..{n - 1}")
    return sorted(set(value))


def group_pattern(group: GroupDef, options: Mapping[str, Any]) -> str:
    """The regex a group spec resolves to (layer indices filled in). Validates the options."""
    allowed = set(LAYER_OPTIONS) if group.layered else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        what = f"options {', '.join(LAYER_OPTIONS)}" if group.layered else "no options"
        raise ConfigError(f"group {group.name!r} takes {what}; unknown: {', '.join(unknown)}")
    if group.layered:
        return layer_regex(group.pattern, _select_layers(group, options))
    return group.pattern


def trainable_names(
    model: torch.nn.Module, group_specs: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, list[str]]:
    """Resolve a group spec to exact parameter names: `{group: [names in model order]}`. Pure (changes nothing).

    ConfigError for an unknown group (the message lists the known ones), bad options, a group that matches no
    parameter, or two groups claiming the same parameter. Tied LM head: `lm_head` resolves to the input embedding
    parameter, the only name the shared tensor has in `named_parameters()`. LoRA tensors belong to `lora` only.
    """
    groups = known_groups(model)
    names = [n for n, _ in model.named_parameters()]
    tied = tied_lm_head(model)
    resolved: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for group_name, options in group_specs.items():
        options = dict(options or {})
        if "regex" in options:
            # A custom group: the recipe names it and gives the regex over full parameter names.
            if len(options) > 1:
                raise ConfigError(f"group {group_name!r}: `regex` takes no other options, got "
                                  f"{', '.join(sorted(set(options) - {'regex'}))}")
            pattern = options.pop("regex")
            try:
                re.compile(pattern)
                group = GroupDef(group_name, pattern, "custom regex group")
            except re.error as exc:
                raise ConfigError(f"group {group_name!r}: bad regex ({exc})") from None
        elif group_name not in groups:
            raise ConfigError(
                f"unknown parameter group {group_name!r} for {type(base_model(model)).__name__}; "
                f"known groups: {', '.join(groups)}; or define one with {{regex: ...}}"
            )
        else:
            group = groups[group_name]
        if group.lm_head and tied:
            matched = [_embedding_name(model)]
            group_pattern(group, options)  # still validate the options
        else:
            regex = re.compile(group_pattern(group, options))
            is_lora = group is LORA_GROUP
            matched = [n for n in names if regex.match(n) and (".lora_" in n) == is_lora]
        if not matched:
            raise ConfigError(
                f"parameter group {group_name!r} ({group.description}) matched no parameter of "
                f"{type(base_model(model)).__name__}" + (" (apply LoRA first)" if group is LORA_GROUP else "")
            )
        for name in matched:
            if name in owner:
                raise ConfigError(
                    f"parameter groups {owner[name]!r} and {group_name!r} both claim {name}; a parameter can have "
                    "only one group (and one learning rate)"
                )
            owner[name] = group_name
        resolved[group_name] = matched
    return resolved


def _flatten(names: Mapping[str, Iterable[str]] | Iterable[str]) -> set[str]:
    if isinstance(names, Mapping):
        return {n for group in names.values() for n in group}
    return set(names)


def apply_trainable(model: torch.nn.Module, names: Mapping[str, Iterable[str]] | Iterable[str]) -> None:
    """`requires_grad_(name in names)` for every parameter; `names` is `trainable_names(...)` or a set of names."""
    wanted = _flatten(names)
    params = dict(model.named_parameters())
    missing = sorted(wanted - params.keys())
    if missing:
        raise ConfigError(f"apply_trainable: not parameters of this model: {', '.join(missing[:5])}")
    for name, param in params.items():
        param.requires_grad_(name in wanted)


@dataclass
class GroupRow:
    group: str
    tensors: int
    params: int
    lr: float | None


@dataclass
class GroupTable:
    """Trainable parameters per group, totals, and notes (e.g. the tied LM head). Plain data; `render()` prints."""

    rows: list[GroupRow]
    trainable: int
    total: int
    notes: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def render(self) -> str:
        lines = [f"{'group':<16} {'tensors':>8} {'params':>15} {'lr':>10}"]
        for r in self.rows:
            lr = f"{r.lr:.3g}" if r.lr is not None else "-"
            lines.append(f"{r.group:<16} {r.tensors:>8} {r.params:>15,} {lr:>10}")
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        lines.append(f"trainable {self.trainable:,} of {self.total:,} ({share:.2f} %); frozen {self.frozen:,}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _lr_for(lrs: Mapping[str, float] | float | None, group: str) -> float | None:
    if lrs is None or isinstance(lrs, (int, float)):
        return lrs
    if group not in lrs:
        raise ConfigError(f"no learning rate for parameter group {group!r}; given for: {', '.join(lrs)}")
    return lrs[group]


def group_table(
    model: torch.nn.Module, groups: Mapping[str, list[str]], lrs: Mapping[str, float] | float | None = None
) -> GroupTable:
    """Rows (group, tensors, params, lr) for `trainable_names(...)` output; works on a meta-device model."""
    params = dict(model.named_parameters())
    rows = [
        GroupRow(g, len(names), sum(params[n].numel() for n in names), _lr_for(lrs, g)) for g, names in groups.items()
    ]
    trainable = sum(r.params for r in rows)
    total = sum(p.numel() for p in params.values())
    notes = []
    if tied_lm_head(model):
        emb = _embedding_name(model)
        n = params[emb].numel()
        if emb in _flatten(groups):
            notes.append(f"lm_head is tied to embed_tokens: training it trains the input embeddings ({n:,} params)")
        else:
            notes.append(f"lm_head is tied to embed_tokens: both stay frozen ({n:,} params)")
    return GroupTable(rows=rows, trainable=trainable, total=total, notes=notes)


def optimizer_param_groups(
    model: torch.nn.Module,
    groups: Mapping[str, list[str]],
    lrs: Mapping[str, float] | float,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """torch optimizer param groups, one per named group: `{"name", "params", "param_names", "lr",
    "weight_decay"}`. With `weight_decay > 0`, a group's biases and norm weights (tensors with < 2 dims) go to a
    companion group `"{name}.no_decay"` with weight decay 0, the usual AdamW practice."""
    params = dict(model.named_parameters())
    out: list[dict[str, Any]] = []
    for group, names in groups.items():
        lr = _lr_for(lrs, group)
        split = {
            group: [n for n in names if weight_decay == 0 or params[n].ndim >= 2],
            f"{group}.no_decay": [n for n in names if weight_decay > 0 and params[n].ndim < 2],
        }
        for key, members in split.items():
            if members:
                out.append(
                    {
                        "name": key,
                        "params": [params[n] for n in members],
                        "param_names": members,
                        "lr": lr,
                        "weight_decay": weight_decay if key == group else 0.0,
                    }
                )
    return out


def rebuild_optimizer(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    groups: Mapping[str, list[str]],
    lrs: Mapping[str, float] | float,
    weight_decay: float = 0.0,
    extra_groups: Iterable[dict[str, Any]] = (),
) -> torch.optim.Optimizer:
    """A new optimizer of the same class and hyper-parameters over the new phase's groups, carrying over the state
    (e.g. AdamW's step, exp_avg, exp_avg_sq: the same tensor objects) of every parameter that stays trainable.
    State of parameters that leave is dropped. `extra_groups`: param groups of tensors outside the model (e.g. a
    training-only head), appended as given. An LR scheduler holds the old optimizer: rebuild it too."""
    # `defaults` can hold keys the constructor does not take (torch's AdamW records `decoupled_weight_decay`).
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    param_groups = optimizer_param_groups(model, groups, lrs, weight_decay) + list(extra_groups)
    new = type(optimizer)(param_groups, **defaults)
    for group in new.param_groups:
        for param in group["params"]:
            if param in optimizer.state:
                new.state[param] = optimizer.state[param]
    return new


def apply_lora(
    model: torch.nn.Module,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_regex: str | None = None,
    layers: list[int] | None = None,
):
    """Wrap `model` with peft LoRA adapters on the language decoder only; returns the `PeftModel`.

    `target_regex` (full-match over module names) defaults to the family's, e.g. for Qwen3-ASR
    `model\\.language_model\\.layers\\.\\d+\\.(?:self_attn|mlp)\\.(?:q|k|v|o|gate|up|down)_proj`; `layers`
    restricts that default to some decoder layers. peft freezes every base parameter; the adapters train.
    """
    from peft import LoraConfig, get_peft_model

    family = family_of(model)
    if target_regex is not None and layers is not None:
        raise ConfigError("apply_lora: give target_regex or layers, not both (layers restricts the default regex)")
    if layers is not None:
        n = family.param_groups(model.config)[family.lora_layers_group].num_layers
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ConfigError(f"apply_lora: layers {bad} out of range; the decoder has layers 0..{n - 1}")
    regex = target_regex or family.lora_target_regex(layers)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none")
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every call): not
            # ours to fix, and it would print on every plan and every LoRA run.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"apply_lora: target regex {regex!r} matched no module: {exc}") from exc
    return peft_model


def lora_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter (for logging and tests)."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A) > 0]


def lora_substitute(model: torch.nn.Module, groups: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """With LoRA applied, a group trains the adapters of its LoRA-wrapped linears instead of their frozen base
    weights: `...q_proj.base_layer.weight` is replaced by `...q_proj.lora_A.<adapter>.weight` and `lora_B`.
    Parameters of the group that carry no adapter (norms, embeddings, the projector) stay as they are."""
    params = [n for n, _ in model.named_parameters()]
    adapters: dict[str, list[str]] = {}
    for name in params:
        if ".lora_" in name:
            adapters.setdefault(name.split(".lora_")[0], []).append(name)
    out: dict[str, list[str]] = {}
    for group, names in groups.items():
        chosen: list[str] = []
        for name in names:
            prefix = name.split(".base_layer.")[0] if ".base_layer." in name else None
            if prefix is not None and prefix in adapters:
                chosen.extend(a for a in adapters[prefix] if a not in chosen)
            else:
                chosen.append(name)
        out[group] = chosen
    return out
