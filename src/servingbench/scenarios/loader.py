"""Load a suite YAML and turn validation failures into messages that name the file, line, field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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


def load_suite(path: str | Path) -> Suite:
    """Parse and validate ``path``.  Raises :class:`ScenarioError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(path, [f"cannot read the file: {e.strerror}"]) from e
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ScenarioError(path, [f"{where}not valid YAML: {getattr(e, 'problem', e)}"]) from e
    if not isinstance(data, dict):
        raise ScenarioError(path, ["the file must be a mapping with at least 'name', 'frameworks', 'models'"])
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc if not _is_tag(p)) or "(top level)"
            line = _line_of(node, loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see 'servingbench validate --schema')"
            value = err.get("input", _value_at(data, loc))
            shown = "" if isinstance(value, (dict, list)) else f" (value: {value!r})"
            problems.append(f"line {line}: {field}: {msg}{shown}" if line else f"{field}: {msg}{shown}")
        raise ScenarioError(path, problems) from None


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
