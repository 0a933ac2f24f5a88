"""Strict YAML -> frozen-dataclass loading with errors that name the key and the line.

`load_yaml(path)` keeps a map from key path ("shared.optimizer.lr") to line number;
`build(cls, data, where=...)` checks every key and type against the dataclass and
raises ConfigError("config.yaml:12: shared.optimizer.lr: expected a number, got 'fast'").
Unknown keys are errors with a did-you-mean; missing required fields too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from gsil_bench.core.aliases import alias_hint
from gsil_bench.core.errors import ConfigError, Problem
from gsil_bench.core.registry import did_you_mean

__all__ = ["ConfigError", "Located", "apply_overrides", "build", "build_collecting", "load_yaml", "parse_override",
           "to_plain"]


class Located:
    """Where values of a loaded YAML document came from: file + key path -> line."""

    def __init__(self, file: str, lines: dict[str, int] | None = None) -> None:
        self.file = file
        self.lines = lines or {}
        self.given: dict[str, str] = {}  # key path -> the command line's KEY=VALUE that set it
        self.origin: list[int] | None = None  # after a sweep: methods[j] is a variant of the YAML's methods[origin[j]]

    def mark_overrides(self, overrides: list[str], data: Any = None) -> None:
        """Keys set by `KEY=VALUE` on the command line: their errors name the command line, not the YAML.
        With the config's `data` (before sweeps), `methods.<label or index>.<key>` also marks
        `methods[i].<key>`, the form problems name."""
        methods = data.get("methods") if isinstance(data, dict) else None
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            self.given[key] = text
            parts = key.split(".")
            if parts[0] == "methods" and len(parts) > 1 and isinstance(methods, list):
                labels = [str(m.get("name") or m.get("loss")) if isinstance(m, dict) else "" for m in methods]
                i = int(parts[1]) if parts[1].isdigit() else (labels.index(parts[1]) if labels.count(parts[1]) == 1 else None)
                if i is not None:
                    self.given[".".join([f"methods[{i}]", *parts[2:]])] = text

    def _yaml_key(self, key: str) -> str:
        """`methods[j]...` of a sweep variant as the YAML's `methods[i]...` it was expanded from."""
        if self.origin is None or not key.startswith("methods["):
            return key
        j, _, rest = key[len("methods["):].partition("]")
        return f"methods[{self.origin[int(j)]}]{rest}" if j.isdigit() and int(j) < len(self.origin) else key

    def at(self, key: str) -> str:
        yaml_key = self._yaml_key(key)
        for k in [yaml_key] + [yaml_key.rsplit(".", n)[0] for n in range(1, yaml_key.count(".") + 1)]:
            if k in self.given:  # this key or a mapping above it came from the command line
                return f"command line {self.given[k]!r}"
        line = self.lines.get(key)
        if line is None and "." in key:  # fall back to the nearest parent with a line
            return self.at(key.rsplit(".", 1)[0])
        where = f"{self.file}:{line}" if line else self.file
        below = [text for k, text in self.given.items() if k.startswith(yaml_key + ".") and "[" in yaml_key]
        return f"command line {below[0]!r} (in {where})" if len(set(below)) == 1 else where

    def as_written(self, key: str) -> str:
        """`key` naming the method as the YAML writes it: a sweep variant's `methods[j]` is the method
        `methods[i]` it was expanded from, so a mistake the variants share is one problem, not one each."""
        return self._yaml_key(key)

    def render(self, problem: Problem) -> str:
        """One line: file:line (of the problem's key, or its nearest parent), key (as written), message."""
        key = problem.key if problem.at is None else problem.at
        return dataclasses.replace(problem, key=self.as_written(problem.key)).render(self.at(key) if key else self.file)

    def render_all(self, problems: list[Problem]) -> list[str]:
        """Every problem once, named as written: a problem every variant of one sweep shares is one line, and a
        variant's override that repeats a shared key's problem (`methods[j].overrides -> shared.K`) is left out."""
        plain = {(p.key, p.message) for p in problems}
        kept = [p for p in problems if not (" -> " in p.key and (p.key.split(" -> ", 1)[1], p.message) in plain)]
        return list(dict.fromkeys(self.render(p) for p in kept))


class _Bad(Exception):
    """A value does not fit its field: the problem, not yet located."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _line_map(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            key = f"{prefix}.{knode.value}" if prefix else str(knode.value)
            out[key] = knode.start_mark.line + 1
            _line_map(vnode, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}[{i}]"
            out[key] = item.start_mark.line + 1
            _line_map(item, key, out)


def load_yaml(path: str | Path) -> tuple[Any, Located]:
    """Parse a YAML file, returning its data and a Located for error messages."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {err}") from None
    lines: dict[str, int] = {}
    if node is not None:
        _line_map(node, "", lines)
    return data, Located(str(path), lines)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Skip(Exception):
    """A nested block could not be built; its problems are already collected."""


def _convert(tp: Any, value: Any, key: str, loc: Located, errors: list[Problem] | None = None) -> Any:
    origin = get_origin(tp)
    fail = _Bad(Problem(key, f"expected {_type_name(tp)}, got {value!r}"))
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, loc, errors)
            except _Bad:
                continue
        raise fail
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise fail
    if origin is list or origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail
        inner = get_args(tp)[0]
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_convert(inner, v, f"{key}[{i}]", loc, errors))
            except _Skip:
                continue
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        inner = get_args(tp)[1]
        return {str(k): _convert(inner, v, f"{key}.{k}", loc, errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail
        return build(tp, value, loc, prefix=key, errors=errors)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise _Bad(Problem(key, f"unsupported field type {tp!r}"))


T = typing.TypeVar("T")


def build(cls: type[T], data: Any, loc: Located | None = None, prefix: str = "",
          errors: list[Problem] | None = None) -> T:
    """Build dataclass `cls` from plain data, strictly (unknown/missing keys, types).

    Without `errors`, the first problem raises ConfigError (its line rendered). With a list,
    every problem is appended to it and a key with a bad value keeps its default, so one
    pass reports all of them; a block that cannot be built at all (a required key missing)
    is left out of its parent."""
    collect = errors is not None
    errs: list[Problem] = errors if errors is not None else []
    loc = loc or Located("<config>")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problem = Problem(prefix or "config", f"expected a mapping, got {data!r}", at=prefix)
        if collect:
            errs.append(problem)
            raise _Skip()
        raise ConfigError(loc.render(problem))
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    n_before = len(errs)
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            hint = alias_hint(str(key), full) or did_you_mean(str(key), list(fields))
            errs.append(Problem("", f"unknown key {full!r}{hint}; allowed here: {', '.join(fields)}", at=full))
        else:
            try:
                kwargs[key] = _convert(hints[key], value, full, loc, errors)
            except _Bad as bad:
                errs.append(bad.problem)
            except _Skip:
                pass
        if not collect and len(errs) > n_before:
            raise ConfigError(loc.render(errs[n_before]))
    buildable = True
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in kwargs:
            full = f"{prefix}.{name}" if prefix else name
            if not any(p.key == full or (p.at or p.key).startswith((f"{full}.", f"{full}[")) for p in errs[n_before:]):
                errs.append(Problem("", f"missing required key {full!r}", at=prefix))
            buildable = False
    if not collect and len(errs) > n_before:
        raise ConfigError(loc.render(errs[n_before]))
    if not buildable:
        raise _Skip()
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as err:
        problem = Problem(prefix or "config", str(err), at=prefix)
        if not collect:
            raise ConfigError(loc.render(problem)) from None
        errs.append(problem)
        raise _Skip() from None
    return obj


def build_collecting(cls: type[T], data: Any, loc: Located, prefix: str = "") -> tuple[T | None, list[Problem]]:
    """Build `cls` collecting every problem: (the object or None, the problems)."""
    errors: list[Problem] = []
    try:
        return build(cls, data, loc, prefix, errors=errors), errors
    except _Skip:
        return None, errors


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value read as YAML, so `[0,1,2]` is a list) into (["a","b","c"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. shared.optimizer.lr=1e-6")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        what = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"command line {text!r}: the value is not valid YAML ({what})") from None
    return key.strip().split("."), value


def method_label(entry: Any) -> str:
    """The one label rule of a method: its `name`, else its loss; for a method block as written (YAML
    data, a run folder's config.yaml) or built (`core.config.MethodConfig.label`). Reports, folders and
    overrides (`methods.<label>.params.b=...`) name a method by it."""
    get = entry.get if isinstance(entry, dict) else lambda key: getattr(entry, key, None)
    return str(get("name") or get("loss"))


def _element(items: list[Any], key: str, text: str, where: str) -> Any:
    """The element of a list an override names: by 0-based index, or by its label (a method's
    `name`, else its `loss`)."""
    if key.isdigit():
        if int(key) < len(items):
            return items[int(key)]
        raise ConfigError(f"override {text!r}: {where} has {len(items)} entries, no index {key}")
    labels = [method_label(v) if isinstance(v, dict) else "" for v in items]
    if labels.count(key) == 1:
        return items[labels.index(key)]
    if labels.count(key) > 1:
        raise ConfigError(f"override {text!r}: {where} has several entries labelled {key!r}; use an index")
    raise ConfigError(f"override {text!r}: no entry {key!r} in {where}{did_you_mean(key, labels)}; "
                      f"entries: {', '.join(labels)} (or an index 0..{len(items) - 1})")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides to nested plain data (a copy). A key is dotted; inside a list
    (`methods`) a part names an entry by its label or 0-based index:
    `methods.gsil-logistic.params.b=[0,1,2]`, `methods.0.params.beta=0.2`."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, k in enumerate(keys[:-1]):
            where = ".".join(keys[:depth]) or "the config"
            if isinstance(node, list):
                nxt = _element(node, k, text, where)
            else:
                nxt = node.get(k)
                if nxt is None:
                    nxt = node[k] = {}
            if not isinstance(nxt, dict | list):
                raise ConfigError(f"override {text!r}: {k!r} is not a mapping")
            node = nxt
        if isinstance(node, list):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[:-1])} is a list; name an entry's key "
                              f"({'.'.join(keys[:-1])}.<label or index>.<key>) or set the whole list")
        node[keys[-1]] = value
    return data


def to_plain(obj: Any) -> Any:
    """Dataclass (nested) -> JSON-able plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj
