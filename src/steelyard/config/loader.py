"""YAML text -> validated Config, with every problem located at FILE:LINE:COL.

How this works: the YAML is composed into nodes (which carry marks) and turned into plain
Python data by hand, recording for every path (("listeners", 0, "bind"), ...) the mark of
its key and of its value; `${NAME}` / `${NAME:-default}` are substituted in string values
on the way. The data is then validated by the pydantic models (models.py) and, separately,
by the semantic rules (rules.py); pydantic's error `loc` paths and the rules' paths are
mapped back to marks. Both passes always run, so a file's problems are reported at once.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from steelyard.config.models import Config, FieldProblem
from steelyard.config.problems import ConfigError, Problem
from steelyard.config.units import _kind

Path = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Marks:
    key: tuple[int, int] | None  # 1-based (line, col) of the key; None for list items / root
    value: tuple[int, int]  # 1-based (line, col) of the value


@dataclass(slots=True)
class Document:
    """Plain data from the YAML plus the marks of every path in it."""

    filename: str
    data: Any
    marks: dict[Path, Marks] = field(default_factory=dict)
    # value positions where ${...} failed: other complaints about them are noise
    poisoned: set[tuple[int, int]] = field(default_factory=set)

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The mark of `path` (its key's when `key`), or of its longest recorded prefix."""
        p = tuple(path)
        while p not in self.marks and p:
            p = p[:-1]
        m = self.marks.get(p)
        if m is None:
            return (1, 1)
        if key and m.key is not None:
            return m.key
        return m.value

    def problem(
        self, path: Path, message: str, *, key: bool = False, warning: bool = False
    ) -> Problem:
        line, col = self.locate(path, key=key)
        return Problem(self.filename, line, col, message, "warning" if warning else "error")

    def has(self, path: Path) -> bool:
        return tuple(path) in self.marks


# ---------------------------------------------------------------- entry points


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file; raises ConfigError listing every problem."""
    config, errors, warnings = analyse_file(path, env=env)
    if errors or config is None:
        raise ConfigError(errors, warnings)
    return config


def load_config_text(
    text: str,
    filename: str = "<string>",
    *,
    base_dir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate config text; relative file paths resolve against base_dir (default: cwd)."""
    config, errors, warnings = analyse_text(text, filename, base_dir=base_dir, env=env)
    if errors or config is None:
        raise ConfigError(errors, warnings)
    return config


def analyse_file(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> tuple[Config | None, list[Problem], list[Problem]]:
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return None, [Problem(filename, 1, 1, f"cannot read config file: {reason}")], []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [Problem(filename, line, col, "the file is not valid UTF-8")], []
    base_dir = os.path.dirname(os.path.abspath(filename))
    config, errors, warnings = analyse_text(text, filename, base_dir=base_dir, env=env)
    if config is not None:
        config._source_path = os.path.abspath(filename)
        config._source_hash = hashlib.sha256(raw).hexdigest()
    return config, errors, warnings


def analyse_text(
    text: str,
    filename: str = "<string>",
    *,
    base_dir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Config | None, list[Problem], list[Problem]]:
    """(config or None, errors, warnings). Never raises for a bad config."""
    from steelyard.config.rules import lint, semantic_errors

    doc, errors = compose(text, filename, os.environ if env is None else env)
    if doc is None:
        return None, errors, []
    if doc.data is None:
        errors.append(
            Problem(
                filename,
                1,
                1,
                "the config is empty: expected a mapping with version, listeners and backends",
            )
        )
        return None, errors, []
    if not isinstance(doc.data, dict):
        line, col = doc.locate(())
        errors.append(
            Problem(
                filename,
                line,
                col,
                f"the top level must be a mapping (version, listeners, backends, ...), "
                f"got {_kind(doc.data)}",
            )
        )
        return None, errors, []
    config: Config | None = None
    context = {"base_dir": base_dir or os.getcwd()}
    # top-level `x-...` keys hold YAML anchors for reuse (as in docker compose): ignored
    data = {k: v for k, v in doc.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    doc.data = data
    found: list[Problem] = []
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        found.extend(pydantic_problems(exc, doc))
    found.extend(semantic_errors(doc))
    errors.extend(p for p in found if (p.line, p.col) not in doc.poisoned)
    warnings = lint(doc, config) if not errors else []
    errors = _dedupe(errors)
    if errors:
        return None, errors, warnings
    assert config is not None
    config._source_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    config._warnings = tuple(warnings)
    return config, [], warnings


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[int, int, str]] = set()
    out: list[Problem] = []
    for p in sorted(problems, key=lambda p: (p.line, p.col)):
        k = (p.line, p.col, p.message)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


# ---------------------------------------------------------------- YAML with marks


def compose(
    text: str, filename: str, env: Mapping[str, str]
) -> tuple[Document | None, list[Problem]]:
    loader = yaml.SafeLoader(text)
    problems: list[Problem] = []
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = exc.problem or "invalid YAML"
            if exc.context:
                what = f"{exc.context}, {what}"
            return None, [Problem(filename, line, col, f"YAML syntax error: {what}")]
        except yaml.YAMLError as exc:
            return None, [Problem(filename, 1, 1, f"YAML error: {exc}")]
        doc = Document(filename, None)
        if node is None:
            return doc, problems
        builder = _Builder(loader, doc, env, problems)
        doc.data = builder.build(node, (), None)
        return doc, problems
    finally:
        loader.dispose()


_MAX_NODES = 100_000


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(
        self,
        loader: yaml.SafeLoader,
        doc: Document,
        env: Mapping[str, str],
        problems: list[Problem],
    ) -> None:
        self.loader = loader
        self.doc = doc
        self.env = env
        self.problems = problems
        self.depth = 0
        self.nodes = 0  # aliases can make a small file expand enormously ("billion laughs")

    def error(self, pos: tuple[int, int], message: str) -> None:
        self.problems.append(Problem(self.doc.filename, pos[0], pos[1], message))

    def build(self, node: yaml.Node, path: Path, key_pos: tuple[int, int] | None) -> Any:
        self.doc.marks.setdefault(path, Marks(key_pos, _pos(node.start_mark)))
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > 100:
                self.error(_pos(node.start_mark), "the config is nested too deeply")
                return None
            if self.nodes > _MAX_NODES:
                if self.nodes == _MAX_NODES + 1:
                    self.error(
                        _pos(node.start_mark),
                        f"the config expands to more than {_MAX_NODES} values (aliases?)",
                    )
                return None
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i), None) for i, item in enumerate(node.value)]
            return self._scalar(node)
        finally:
            self.depth -= 1

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        seen: dict[Any, tuple[int, int]] = {}
        for knode, _ in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or not isinstance(knode, yaml.ScalarNode):
                continue
            key = self._key(knode)
            if key in seen:
                line = seen[key][0]
                self.error(
                    _pos(knode.start_mark), f"duplicate key {key!r} (first given on line {line})"
                )
            else:
                seen[key] = _pos(knode.start_mark)
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.error(_pos(mark), f"invalid merge (<<): {exc.problem}")
            return {}
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.error(
                    _pos(knode.start_mark), "a key must be a plain value, not a list or mapping"
                )
                continue
            key = self._key(knode)
            if key in out:  # merged key overridden by an explicit one: the last wins
                for p in [p for p in self.doc.marks if p[: len(path) + 1] == (*path, key)]:
                    del self.doc.marks[p]
            out[key] = self.build(vnode, (*path, key), _pos(knode.start_mark))
        return out

    def _key(self, knode: yaml.ScalarNode) -> Any:
        try:
            key = self.loader.construct_object(knode, deep=True)
        except yaml.YAMLError:
            return knode.value
        try:
            hash(key)
        except TypeError:
            return knode.value
        return key

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            self.error(_pos(node.start_mark), f"YAML error: {problem}")
            self.doc.poisoned.add(_pos(node.start_mark))
            return None
        if isinstance(value, str) and "$" in value:
            before = len(self.problems)
            expanded = self._interpolate(value, node)
            if len(self.problems) > before:
                # keep the text as written; complaints about it at this spot are dropped
                self.doc.poisoned.add(_pos(node.start_mark))
            else:
                value = expanded
        return value

    def _interpolate(self, value: str, node: yaml.Node) -> str:
        start = _pos(node.start_mark)
        style = getattr(node, "style", None)
        single_line = node.start_mark.line == node.end_mark.line
        exact = single_line and (
            style is None
            or (style == "'" and "''" not in value)
            or (
                style == '"'
                and "\\"
                not in (node.start_mark.buffer or "")[node.start_mark.index : node.end_mark.index]
            )
        )
        shift = 1 if style in ("'", '"') else 0

        def pos(offset: int) -> tuple[int, int]:
            return (start[0], start[1] + shift + offset) if exact else start

        out: list[str] = []
        i = 0
        for m in _ENV.finditer(value):
            out.append(value[i : m.start()])
            i = m.end()
            if m.group(0) == "$${":
                out.append("${")
                continue
            body = m.group("body")
            if body is None:
                self.error(pos(m.start()), "unterminated '${' (write $${ for a literal '${')")
                out.append(m.group(0))
                continue
            vm = _VAR.fullmatch(body)
            if vm is None:
                self.error(
                    pos(m.start()),
                    f"invalid variable reference '${{{body}}}': expected ${{NAME}} or "
                    "${NAME:-default}",
                )
                continue
            name, default = vm.group(1), vm.group(3)
            got = self.env.get(name)
            if got is None or (got == "" and default is not None):
                if default is None:
                    self.error(
                        pos(m.start()),
                        f"environment variable {name} is not set "
                        f"(use ${{{name}:-default}} to give a default)",
                    )
                    continue
                got = default
            out.append(got)
        out.append(value[i:])
        return "".join(out)


_ENV = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_VAR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(:-(.*))?", re.DOTALL)


# ---------------------------------------------------------------- pydantic errors -> problems


def pydantic_problems(exc: ValidationError, doc: Document) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: Path = tuple(err["loc"])
        typ = err["type"]
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, FieldProblem):
            path = (*loc, inner.key)
            out.append(doc.problem(path, str(inner)))
        elif typ == "too_short" and len(err.get("input") or ()) >= ctx.get("min_length", 0):
            continue  # some items were invalid; they are reported themselves
        elif typ == "extra_forbidden":
            out.append(doc.problem(loc, unknown_key_message(loc), key=True))
        elif typ == "missing":
            parent = loc[:-1]
            where = _label(parent)
            suffix = f" in {where}" if where else ""
            out.append(doc.problem(parent, f"missing required key {loc[-1]!r}{suffix}", key=True))
        else:
            message = _message(err)
            short = _short_label(loc)
            last = re.escape(short.rpartition(".")[2])
            if short and not re.search(rf"(^|\s){last}(\s|$)", message.partition(":")[0]):
                message = f"{short}: {message}"
            out.append(doc.problem(loc, message))
    return out


def _label(loc: Path) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _short_label(loc: Path) -> str:
    """The key path inside the innermost listener/route/server/backend: `timeouts.connect`."""
    if loc and isinstance(loc[-1], int):
        keys = [p for p in loc[:-1] if isinstance(p, str)]
        return f"{keys[-1]}[{loc[-1]}]" if keys else ""
    start = 0
    for i, p in enumerate(loc):
        if isinstance(p, int) or (i == 1 and loc[0] == "backends"):
            start = i + 1
    return ".".join(str(p) for p in loc[start:] if not isinstance(p, int))


def _message(err: Any) -> str:
    typ: str = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    got = _kind(value)
    if typ == "value_error":
        msg: str = err["msg"]
        return msg.removeprefix("Value error, ")
    if typ == "string_type":
        if isinstance(value, bool):
            return (
                f"expected a string, got {value!r} (YAML reads yes/no/on/off/true/false "
                "as booleans: quote the value)"
            )
        return f"expected a string, got {got}"
    if typ in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if typ in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if typ in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if typ in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return f"expected a mapping, got {got}"
    if typ in ("tuple_type", "list_type", "sequence_type", "iterable_type"):
        return f"expected a list, got {got}"
    if typ == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [a or b for a, b in re.findall(r"'([^']*)'|(\d+)", expected)]
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown value {value!r}{hint}; expected one of: {', '.join(choices)}"
    if typ == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {value!r}"
    if typ == "less_than_equal":
        return f"must be at most {ctx.get('le')}, got {value!r}"
    if typ == "greater_than":
        return f"must be greater than {ctx.get('gt')}, got {value!r}"
    if typ == "too_short":
        return f"needs at least {ctx.get('min_length')} entry, got none"
    return str(err["msg"])


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def model_at(loc: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`, by walking Config's fields."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(part) if isinstance(part, str) else None
            if f is None:
                return None
            tp = f.annotation
        elif origin is tuple:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


# keys the loader fills in: never typed by a user
_HIDDEN = {"Backend": {"name"}}


def allowed_keys(model: type[BaseModel]) -> list[str]:
    hidden = _HIDDEN.get(model.__name__, set())
    return [k for k in model.model_fields if k not in hidden]


def unknown_key_message(loc: Path) -> str:
    key = loc[-1]
    parent = loc[:-1]
    model = model_at(parent)
    where = _label(parent) or "the top level"
    msg = f"unknown key {key!r} in {where}"
    if model is None:
        return msg
    keys = allowed_keys(model)
    for fname in keys:
        sub = _unwrap(model.model_fields[fname].annotation)
        if typing.get_origin(sub) is tuple:
            sub = _unwrap(typing.get_args(sub)[0])
        if isinstance(sub, type) and issubclass(sub, BaseModel) and key in sub.model_fields:
            return f"{msg} (it belongs under {fname!r}: {fname}.{key})"
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
    if close:
        return f"{msg} (did you mean {close[0]!r}?)"
    return f"{msg}; expected one of: {', '.join(keys)}"
