"""Load a suite YAML and turn validation failures into messages that name the file, line, field and value.

The YAML is parsed with limits before anything validates it, so a hostile or broken file is a clear
:class:`ScenarioError` instead of a hang, a memory blow-up or a traceback:

* only regular files are read (a FIFO or device path never blocks), at most :data:`MAX_BYTES`;
* the text must be UTF-8 (the error names the byte offset);
* nesting deeper than :data:`MAX_DEPTH` levels, more than :data:`MAX_ALIASES` alias uses (``*name``), aliases that
  expand to more than :data:`MAX_NODES` values (a "billion laughs" bomb) and recursive aliases are refused;
* a key that appears twice in one mapping is refused (YAML would silently keep the last one).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from servingbench.scenarios.schema import Suite


class ScenarioError(ValueError):
    """A scenario file is invalid.  ``problems`` lists (location, message) pairs."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: invalid scenario\n" + "\n".join(f"  - {p}" for p in problems))


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    line = None
    for part in loc:
        if node is None:
            break
        if _is_tag(part):
            continue
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            # pydantic adds union/discriminator tags ('closed_loop', 'function-after[...]') to loc: skip them
            continue
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
    return cur


MAX_BYTES = 1 * 2**20
"""Largest suite file read (1 MiB)."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and lists."""
MAX_ALIASES = 100
"""Most alias uses (``*name``) in one file."""
MAX_NODES = 100_000
"""Most values (scalars, lists, mappings) in the document once every alias is expanded."""


class _Limit(yaml.YAMLError):
    """A parse limit was hit: ``line`` (1-based, or None) and ``message`` (what is wrong and the fix)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias uses, bounds nesting depth and rejects duplicate keys while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Limit(event.start_mark.line + 1,
                             f"more than {MAX_ALIASES} alias uses (*name): a suite needs only a few; write the "
                             "values out instead of referring to anchors")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(event.start_mark.line + 1,
                             f"nested more than {MAX_DEPTH} levels deep: a suite needs a few levels; flatten it")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):  # type: ignore[override]
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            ident = (key.tag, key.value)
            if ident in seen:
                raise _Limit(line, f"key {key.value!r} appears twice in one mapping (first at line {seen[ident]}): "
                                   "YAML would silently keep only the last one; remove or rename one of them")
            seen[ident] = line
        return node


def _expanded_size(root: yaml.Node) -> None:
    """Raise :class:`_Limit` when ``root`` expands to more than MAX_NODES values or refers to itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def children(n: yaml.Node) -> list[yaml.Node]:
        if isinstance(n, MappingNode):
            return [x for kv in n.value for x in kv]
        if isinstance(n, SequenceNode):
            return list(n.value)
        return []

    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk; shared (aliased) nodes are counted every time they are used
        n, done = stack.pop()
        if id(n) in sizes:
            continue
        if done:
            active.discard(id(n))
            total = 1 + sum(sizes[id(c)] for c in children(n))
            if total > MAX_NODES:
                raise _Limit(n.start_mark.line + 1,
                             f"the aliases expand to more than {MAX_NODES} values (a \"billion laughs\" bomb?): "
                             "write the values out without nesting aliases")
            sizes[id(n)] = total
            continue
        if id(n) in active:
            raise _Limit(n.start_mark.line + 1, "an alias refers to the value that contains it (a recursive "
                                                "structure): write the value out instead")
        active.add(id(n))
        stack.append((n, True))
        for c in children(n):
            if id(c) in active:
                raise _Limit(c.start_mark.line + 1, "an alias refers to the value that contains it (a recursive "
                                                    "structure): write the value out instead")
            if id(c) not in sizes:
                stack.append((c, False))


def _read_text(path: Path) -> str:
    """The file's text: a regular file of at most MAX_BYTES of UTF-8; ScenarioError otherwise (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ScenarioError(path, [f"cannot read the file: {e.strerror or e}; check the path"]) from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ScenarioError(path, ["is a directory, not a suite file: give the path of a suite YAML file"])
        if not stat.S_ISREG(st.st_mode):
            raise ScenarioError(path, ["is not a regular file (a FIFO, socket or device): give the path of a "
                                       "suite YAML file"])
        if st.st_size > MAX_BYTES:
            raise ScenarioError(path, [f"the file is {st.st_size} bytes; a suite file is at most {MAX_BYTES} bytes "
                                       "(1 MiB): remove large inline data or split the suite"])
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ScenarioError(path, [f"cannot read the file: {e.strerror or e}"]) from e
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_BYTES:
        raise ScenarioError(path, [f"the file is over {MAX_BYTES} bytes; a suite file is at most 1 MiB: remove "
                                   "large inline data or split the suite"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ScenarioError(path, [f"line {line}: byte offset {e.start}: not UTF-8 text (byte 0x{raw[e.start]:02x}): "
                                   "save the file as UTF-8"]) from None


def parse_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """``(data, node)`` of a YAML file, parsed safely with the limits above (:class:`ScenarioError` otherwise)."""
    path = Path(path)
    text = _read_text(path)
    loader = None
    try:
        loader = _LimitedLoader(text)  # the reader checks for unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None, None
        _expanded_size(node)
        data = loader.construct_document(node)
    except _Limit as e:
        raise ScenarioError(path, [f"line {e.line}: {e.message}" if e.line else e.message]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ScenarioError(path, [f"{where}not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    except RecursionError:
        raise ScenarioError(path, [f"nested too deeply: flatten the structure (at most {MAX_DEPTH} levels)"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def load_suite(path: str | Path) -> Suite:
    """Parse (with limits, :func:`parse_yaml`) and validate ``path``.  Raises :class:`ScenarioError` listing every
    problem."""
    path = Path(path)
    data, node = parse_yaml(path)
    if not isinstance(data, dict):
        raise ScenarioError(path, ["the file must be a mapping with at least 'name', 'frameworks', 'models'"])
    try:
        return Suite.model_validate(data, context={"base": path.absolute().parent})
    except ValidationError as e:
        problems = []
        for err in _relevant(e.errors()):
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc if not _is_tag(p)) or "(top level)"
            line = _line_of(node, loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see 'servingbench validate --schema')"
            value = err.get("input", _value_at(data, loc))
            msg += _hint(err["type"], value)
            text = repr(value)
            text = text if len(text) <= 200 else text[:197] + "..."
            shown = "" if isinstance(value, (dict, list)) else f" (value: {text})"
            problems.append(f"line {line}: {field}: {msg}{shown}" if line else f"{field}: {msg}{shown}")
        raise ScenarioError(path, problems) from None


_WRONG_BRANCH = {"literal_error": str, "model_type": dict, "dict_type": dict, "model_attributes_type": dict}
"""Error types that only say "the value is not this alternative's kind" (value's type differs from the kind)."""


def _relevant(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors worth showing: of the alternatives of a union (``cpu_sets: auto | {server, generator}``), an
    alternative that the value is not even shaped like is dropped when another alternative says what is wrong."""
    by_field: dict[tuple, list[dict[str, Any]]] = {}
    for err in errors:
        by_field.setdefault(tuple(p for p in err["loc"] if not _is_tag(p)), []).append(err)
    out = []
    for err in errors:
        group = by_field[tuple(p for p in err["loc"] if not _is_tag(p))]
        kind = _WRONG_BRANCH.get(err["type"])
        union = any(_is_tag(p) for p in err["loc"])
        if union and kind is not None and len(group) > 1 and not isinstance(err.get("input"), kind) and \
                any(o is not err and _WRONG_BRANCH.get(o["type"]) is None for o in group):
            continue
        out.append(err)
    return out


def _hint(kind: str, value: Any) -> str:
    """The fix for pydantic's own messages that do not say it."""
    if isinstance(value, float) and not math.isfinite(value):
        return ": .inf and .nan are not accepted, write a finite number"
    if kind == "int_parsing" and isinstance(value, str) and _FLOATISH.fullmatch(value.strip()):
        return ": write a whole number without a decimal point or exponent (e.g. 1000 instead of 1e3)"
    return ""


_FLOATISH = re.compile(r"[-+]?(\d[\d_]*)?(\.\d*)?([eE][-+]?\d+)?")


def apply_overrides(suite: Suite, path: str | Path, *, runtime: str | None = None,
                    generator_workers: int | str | None = None) -> Suite:
    """The suite with command-line overrides applied (errors name the option and the bad value)."""
    update: dict[str, Any] = {}
    if runtime is not None:
        if runtime not in ("local", "docker"):
            raise ScenarioError(Path(path), [f"--runtime: {runtime!r} is not one of 'local', 'docker'"])
        update["runtime"] = runtime
    if generator_workers is not None:
        from servingbench.scenarios.schema import Generator

        try:
            workers = Generator.parse_workers(generator_workers)
        except ValueError as e:
            raise ScenarioError(Path(path), [f"--generator-workers {e}"]) from None
        update["generator"] = suite.generator.model_copy(update={"workers": workers})
    return suite.model_copy(update=update) if update else suite


def _is_tag(p: Any) -> bool:
    return isinstance(p, str) and (p in ("closed_loop", "open_loop", "slo_search", "shape") or "[" in p)
