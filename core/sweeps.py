"""Sweeps: lists in an experiment's config expanded into named method variants.

A method's loss parameter, one of its `overrides`, or a scalar of a shared block that a
method may change (`core.config.OVERRIDABLE`: optimizer, schedule, train, generation,
self_play; e.g. `shared.optimizer.lr`) may be given as a list:

    methods:
      - loss: gsil-logistic
        params: {a: 0.01, b: [0, 1, 2]}          # -> gsil-logistic[b=0], gsil-logistic[b=1], gsil-logistic[b=2]
      - loss: dpo
        overrides: {optimizer.lr: [1e-6, 1e-5]}  # -> dpo[lr=1e-06], dpo[lr=1e-05]
    shared:
      optimizer: {lr: [1e-6, 1e-5]}              # every method, as a per-method override

Several lists in one method give their grid (the product, in the order written; the shared
sweeps last). Each variant is an ordinary method: label `<label>[k=v,...]` (the last part of
each swept key, the full key where two would read alike), its own `sweep` (swept key -> its
value) and `sweep_of` (the label it was expanded from), its own training key and hash
(`variant_hash`). A key whose schema type is a list (`optimizer.betas`) is never swept. A
shared sweep keeps its first value in the shared block (so the shared hash is one value);
every variant carries its own as an override (a method that sets the same key itself keeps
its own), and `report.baseline` naming a swept method means its first variant.

Work that does not depend on the swept value is shared as before (trainers.inputs keys it by
what it depends on): the starting model's generations and reference log-probs, and the
starting model's evaluation. `expand_sweeps` runs on the plain YAML data before the schema is
built, and keeps file:line positions pointing at the method a variant came from.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from gsil_bench.core.config import OVERRIDABLE, SharedConfig, for_method, hash_view
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.io import hash_obj
from gsil_bench.core.strict import Located, method_label

SCALARS = (int, float, str, bool)


def _unwrap(tp: Any) -> Any:
    """X for X | None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_scalar(tp: Any) -> bool:
    tp = _unwrap(tp)
    if get_origin(tp) is Literal:
        return True
    if get_origin(tp) in (Union, types.UnionType):
        return all(_is_scalar(a) for a in get_args(tp) if a is not type(None))
    return tp in SCALARS


def shared_key_type(dotted: str) -> Any:
    """The schema type of a key dotted below `shared` (None when there is no such key)."""
    tp: Any = SharedConfig
    for part in dotted.split("."):
        tp = _unwrap(tp)
        if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
            return None
        hints = get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def value_text(v: Any) -> str:
    """A swept value in a label: 0.5, 2, 1e-05, true, cosine."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float | int):
        return format(float(v), "g")
    return str(v)


def variant_label(label: str, point: dict[str, Any]) -> str:
    """`gsil-logistic[b=0.5]`; the full key where two swept keys end alike."""
    shorts = [_short(k) for k in point]
    names = [_short(k) if shorts.count(_short(k)) == 1 else k for k in point]
    return f"{label}[" + ",".join(f"{n}={value_text(v)}" for n, v in zip(names, point.values())) + "]"


def _shared_axes(data: dict[str, Any], loc: Located) -> list[tuple[str, list[Any]]]:
    """(override key, values) of every list-valued scalar below the overridable shared blocks;
    each is replaced by its first value in `data`."""
    axes: list[tuple[str, list[Any]]] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in list(node.items()):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            tp = shared_key_type(dotted)
            if isinstance(value, dict) and tp is not None and not _is_scalar(tp):
                walk(value, dotted)
            elif isinstance(value, list) and tp is not None and _is_scalar(tp):
                axes.append((f"overrides.{dotted}", _values(value, f"shared.{dotted}", loc, tp)))
                node[key] = axes[-1][1][0]

    shared = data.get("shared")
    if isinstance(shared, dict):
        for block in OVERRIDABLE:
            if isinstance(shared.get(block), dict):
                walk(shared[block], block)
    return axes


def _values(values: list[Any], key: str, loc: Located, tp: Any = float) -> list[Any]:
    """The swept values, numbers of a float key as floats (YAML reads 1e-5 as a string)."""
    if not values:
        raise ConfigError(f"{loc.at(key)}: {key}: a sweep needs at least one value, got []")
    if _unwrap(tp) is float:
        values = [_number(v) for v in values]
    seen = [value_text(v) for v in values]
    dup = next((s for s in seen if seen.count(s) > 1), None)
    if dup is not None:
        raise ConfigError(f"{loc.at(key)}: {key}: the sweep lists {dup} twice ({values})")
    return list(values)


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v  # the schema names the bad value
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _method_axes(method: dict[str, Any], i: int, loc: Located) -> list[tuple[str, list[Any]]]:
    axes = []
    params = method.get("params")
    if isinstance(params, dict):
        axes += [(f"params.{k}", _values(v, f"methods[{i}].params.{k}", loc))
                 for k, v in params.items() if isinstance(v, list)]
    overrides = method.get("overrides")
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            tp = shared_key_type(str(k))
            if isinstance(v, list) and tp is not None and _is_scalar(tp):
                axes.append((f"overrides.{k}", _values(v, f"methods[{i}].overrides.{k}", loc, tp)))
    return axes


def _set(method: dict[str, Any], key: str, value: Any) -> None:
    block, name = key.split(".", 1)
    method.setdefault(block, {})
    method[block] = {**method[block], name: value}


def expand_sweeps(data: dict[str, Any], loc: Located) -> tuple[dict[str, Any], Located]:
    """The experiment with every sweep expanded into method variants (a copy), and a Located
    whose `methods[j]` positions are those of the method variant j came from."""
    if not isinstance(data.get("methods"), list):
        return data, loc
    data = copy.deepcopy(data)
    shared_axes = _shared_axes(data, loc)
    methods: list[Any] = []
    origin: list[int] = []
    renamed: dict[str, str] = {}
    for i, method in enumerate(data["methods"]):
        if not isinstance(method, dict):
            methods.append(method)
            origin.append(i)
            continue
        own = set(method.get("overrides") or {}) if isinstance(method.get("overrides"), dict) else set()
        axes = _method_axes(method, i, loc) + [a for a in shared_axes if a[0].removeprefix("overrides.") not in own]
        if not axes:
            methods.append(method)
            origin.append(i)
            continue
        label = method_label(method)
        for combo in itertools.product(*(values for _, values in axes)):
            point = dict(zip((k for k, _ in axes), combo))
            variant = copy.deepcopy(method)
            for key, value in point.items():
                _set(variant, key, value)
            variant.update(name=variant_label(label, point), sweep=point, sweep_of=label)
            renamed.setdefault(label, variant["name"])
            methods.append(variant)
            origin.append(i)
    data["methods"] = methods
    report = data.get("report")
    if isinstance(report, dict) and report.get("baseline") in renamed:
        report["baseline"] = renamed[report["baseline"]]
    return data, _relocated(loc, origin)


def _relocated(loc: Located, origin: list[int]) -> Located:
    """`methods[j]...` positions taken from `methods[origin[j]]...`."""
    if origin == list(range(len(origin))):
        return loc
    lines = {k: v for k, v in loc.lines.items() if not k.startswith("methods[")}
    for j, i in enumerate(origin):
        head = f"methods[{i}]"
        for k, v in loc.lines.items():
            if k == head or k.startswith(head + ".") or k.startswith(head + "["):
                lines[f"methods[{j}]" + k[len(head):]] = v
    moved = copy.copy(loc)  # keeps whatever else a Located records (e.g. which keys came from the command line)
    moved.lines = lines
    moved.origin = list(origin) if loc.origin is None else [loc.origin[i] for i in origin]
    return moved


def variant_hash(cfg: Any, label: str) -> str:
    """sha256 (first 16 hex) of what a method trains with: the shared block as the method sees
    it (its overrides applied), its loss, parameters and per-iteration parameters."""
    method = cfg.method(label)
    return hash_obj({"shared": hash_view(for_method(cfg, label).shared), "loss": method.loss,
                     "params": method.params, "per_iteration": hash_view(method.per_iteration)})[:16]


def sweeps_of(cfg: Any) -> dict[str, list[Any]]:
    """Expanded label -> its variants (MethodConfigs), in config order."""
    out: dict[str, list[Any]] = {}
    for m in cfg.methods:
        if m.sweep_of:
            out.setdefault(m.sweep_of, []).append(m)
    return out


def inputs_group(cfg: Any, label: str) -> str:
    """Hash of what a method's first-iteration inputs (the starting model's generations and the
    reference log-probs) depend on in the config: equal for variants that share them."""
    s = for_method(cfg, label).shared
    return hash_obj({"model": s.model, "revision": s.model_revision, "data": hash_view(s.train_data),
                     "preference": hash_view(s.preference_data), "generation": hash_view(s.generation),
                     "lengths": [s.train.max_length, s.train.max_prompt_length], "precision": s.train.precision,
                     "seeds": s.seeds if s.generation.temperature > 0 else None})[:12]


def describe_sweeps(cfg: Any, uses_inputs: typing.Callable[[str], bool]) -> list[str]:
    """Lines for `run --dry-run`: each sweep's variants with their hashes, and what they share.
    `uses_inputs(label)`: the method's first iteration needs the starting model's generations or
    reference log-probs."""
    lines = []
    for label, variants in sweeps_of(cfg).items():
        grid = " x ".join(f"{k} in [{', '.join(dict.fromkeys(value_text(m.sweep[k]) for m in variants))}]"
                          for k in variants[0].sweep)
        lines.append(f"sweep {label}: {grid} -> {len(variants)} variants: "
                     + ", ".join(f"{m.label} (hash {variant_hash(cfg, m.label)})" for m in variants))
    if not lines:
        return []
    groups: dict[str, list[str]] = {}
    for m in cfg.methods:
        if uses_inputs(m.label):
            groups.setdefault(inputs_group(cfg, m.label), []).append(m.label)
    for key, labels in groups.items():
        sampled = for_method(cfg, labels[0]).shared.generation.temperature > 0
        lines.append(f"shared work (inputs group {key}): the starting model's generations and reference log-probs, "
                     f"made once"
                     f"{' per seed' if sampled else ''} for {len(labels)} method(s): {', '.join(labels)}")
    lines.append("shared work: the starting model's evaluation, once for every method; each variant trains "
                 "(and, self-playing, generates from iteration 2 on) with its own value")
    return lines
