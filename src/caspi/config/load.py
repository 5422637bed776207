"""Loading a recipe: YAML (optionally on top of a `base:` recipe) → `key.sub=value` overrides → validation in one
pass. Every unknown key, bad value and inconsistent combination is reported at once, each with its dotted path
(`train.micro_batch: ...`), in one `ConfigError`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from caspi.config.schema import Recipe, cross_checks
from caspi.errors import ConfigError


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for 'did you mean' hints); descends through list/dict items."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]  # the item type; `part` is an index or a key
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _format_errors(errors: list[dict]) -> list[str]:
    problems = []
    for err in errors:
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "<recipe>"
        if err["type"] == "extra_forbidden":
            known = _known_keys(Recipe, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"{path}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            if known:
                msg += f"; valid keys here: {', '.join(known)}"
        elif err["type"] == "missing":
            msg = f"{path}: required key is missing"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{path}: {text} (got {err['input']!r})" if "input" in err and not isinstance(
                err["input"], dict) else f"{path}: {text}"
        problems.append(msg)
    return problems


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a recipe file, resolving `base:` (a path relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: recipe `base:` chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a path to another recipe, got {base!r}")
    return _deep_merge(_read_yaml(path.parent / base, seen + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=10` → (["train", "max_steps"], 10). Values are parsed as YAML (`null`, `[0.9, 1.1]`)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value, e.g. train.max_steps=100")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `key.sub=value` set. Unknown keys are caught by validation."""
    data = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i])} is not a section")
            node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
    return data


def _drop_locations(data: Any, locs: list[tuple]) -> Any:
    """A copy of `data` without the values at `locs`, so that defaults stand in for the invalid ones."""
    data = json.loads(json.dumps(data))
    for loc in locs:
        node = data
        for part in loc[:-1]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
                break
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    return data


def validate_recipe_dict(data: dict, source: str = "<recipe>") -> Recipe:
    """Validate plain data as a Recipe, raising one ConfigError that lists every problem.

    Field errors and cross-field errors are reported together: when fields are invalid, they are dropped (their
    defaults stand in) so the combination checks still run on the rest.
    """
    problems: list[str] = []
    recipe = None
    attempt = data
    for round_ in range(3):  # a dropped value can expose a missing required key; a few rounds settle it
        try:
            recipe = Recipe.model_validate(attempt)
            break
        except ValidationError as exc:
            # After the first round, "missing" errors are our own doing (we dropped the value): not reported.
            errors = [e for e in exc.errors() if round_ == 0 or e["type"] != "missing"]
            problems += [p for p in _format_errors(errors) if p not in problems]
            attempt = _drop_locations(attempt, [tuple(e["loc"]) for e in exc.errors() if e["loc"]])
    if recipe is not None:
        problems += [p for p in cross_checks(recipe) if p not in problems]
    if problems or recipe is None:
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the recipe", problems)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (with its `base:` chain), apply overrides, validate; report every problem at once."""
    data = apply_overrides(_read_yaml(Path(path)), list(overrides or []))
    return validate_recipe_dict(data, source=str(path))
