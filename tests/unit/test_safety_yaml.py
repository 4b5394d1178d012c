"""Issue 15, defects 4, 8 and 11 (suite files): the suite parser has limits and every bad file is a clear error.

Each error names the file, what is wrong and the fix; nothing here may hang, exhaust memory or end in a traceback.
The inputs are written to fail before framework validation, so these tests do not depend on the adapters.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from servingbench.scenarios.loader import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, ScenarioError, load_suite, parse_yaml
from servingbench.scenarios.schema import Suite


def write(tmp_path: Path, text: str | bytes, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def error_of(path: Path) -> str:
    t0 = time.monotonic()
    with pytest.raises(ScenarioError) as e:
        load_suite(path)
    assert time.monotonic() - t0 < 20, "the parser must refuse quickly"
    text = str(e.value)
    assert text.startswith(f"{path}: "), text  # names the file
    assert "Traceback" not in text
    return text


# ---- defect 4: the suite name -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x/../../../escaped", "/", "a\x00b", "..", ".hidden", "-x", "a b", "a" * 65, "",
                                  "émoji", "x\ny"])
def test_suite_name_must_be_a_safe_name(tmp_path, name):
    text = error_of(write(tmp_path, f"name: {_yaml_str(name)}\nframeworks: [litserve]\nmodels: [mlp]\n"))
    line = next(l for l in text.splitlines() if ": name: " in l)
    assert "line 1: name: the suite name" in line  # the field
    assert repr(name) in line  # the value
    assert "letters A-Z a-z, digits 0-9, '.', '_' and '-'" in line  # the allowed set


def _yaml_str(s: str) -> str:
    """A double-quoted YAML scalar for ``s`` (NUL and newline as escapes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\0").replace("\n", "\\n") + '"'


def test_suite_name_validator_directly():
    with pytest.raises(ValidationError) as e:
        Suite.model_validate({"name": "x/../../../escaped", "frameworks": [], "models": []})
    errs = {tuple(x["loc"]): x["msg"] for x in e.value.errors()}
    assert "contains '/'" in errs[("name",)]
    for ok in ("quick", "e2e", "isolation-probes", "gpu.docker_v2", "a" * 64):
        with pytest.raises(ValidationError) as e:
            Suite.model_validate({"name": ok, "frameworks": [], "models": []})
        assert ("name",) not in {tuple(x["loc"]) for x in e.value.errors()}, ok


# ---- defect 8: YAML bombs and parser limits --------------------------------------------------------------------------
BOMB = """\
name: bomb
frameworks: [litserve]
models: [mlp]
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
deployments:
  - label: x
    options: {litserve: {knob: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]}}
"""


def test_billion_laughs_in_options_is_refused(tmp_path):
    text = error_of(write(tmp_path, BOMB))
    assert "the aliases expand to more than" in text and "billion laughs" in text
    assert "write the values out" in text  # the fix


def test_too_many_alias_uses(tmp_path):
    aliases = ", ".join(["*one"] * (MAX_ALIASES + 1))
    text = error_of(write(tmp_path, f"name: t\nx: &one 1\ny: [{aliases}]\n"))
    assert f"line 3: more than {MAX_ALIASES} alias uses" in text


def test_a_few_aliases_are_fine(tmp_path):
    data, _ = parse_yaml(write(tmp_path, "name: t\nx: &one {a: 1}\ny: [*one, *one]\n"))
    assert data["y"] == [{"a": 1}, {"a": 1}]


def test_recursive_alias_is_refused(tmp_path):
    assert "recursive structure" in error_of(write(tmp_path, "name: t\nx: &a [1, *a]\n"))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 600, 100_000])
def test_deep_nesting_is_refused(tmp_path, depth):
    text = error_of(write(tmp_path, "name: t\nx: " + "[" * depth + "]" * depth + "\n"))
    assert f"nested more than {MAX_DEPTH} levels deep" in text and "line 2" in text


def test_nesting_within_the_limit_is_fine(tmp_path):
    data, _ = parse_yaml(write(tmp_path, "x: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "\n"))
    assert isinstance(data["x"], list)


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    text = error_of(write(tmp_path, "name: t\nframeworks: [litserve]\nname: u\n"))
    assert "line 3: key 'name' appears twice in one mapping (first at line 1)" in text
    text = error_of(write(tmp_path, "name: t\nmeasurement:\n  windows: 3\n  windows: 4\n"))
    assert "line 4: key 'windows' appears twice" in text


def test_merge_keys_are_not_duplicates(tmp_path):
    data, _ = parse_yaml(write(tmp_path, "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n"))
    assert data["d"] == {"x": 1, "y": 3}


def test_non_utf8_names_the_byte_offset(tmp_path):
    text = error_of(write(tmp_path, b"name: t\ndescription: caf\xe9\n"))
    assert "line 2: byte offset 24: not UTF-8 text (byte 0xe9)" in text and "save the file as UTF-8" in text


def test_binary_file(tmp_path):
    text = error_of(write(tmp_path, bytes(range(256)) * 4))
    assert "not UTF-8" in text or "not valid YAML" in text


def test_nul_character_is_not_yaml(tmp_path):
    assert "not valid YAML" in error_of(write(tmp_path, b"name: t\x00\n"))


def test_utf8_bom_is_fine(tmp_path):
    data, _ = parse_yaml(write(tmp_path, "\ufeffname: t\n".encode()))
    assert data == {"name": "t"}


def test_oversized_file(tmp_path):
    text = error_of(write(tmp_path, "name: t\ndescription: " + "x" * MAX_BYTES + "\n"))
    assert f"a suite file is at most {MAX_BYTES} bytes (1 MiB)" in text


def test_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            load_suite(fifo)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            result.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock a reader stuck in open() so the thread can end
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("load_suite blocked on a FIFO")
    assert isinstance(result[0], ScenarioError), result
    assert "is not a regular file" in str(result[0]) and str(fifo) in str(result[0])


def test_directory_and_missing_file(tmp_path):
    assert "is a directory" in error_of(tmp_path)
    assert "cannot read the file" in error_of(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "", "just a string\n", "name: [unclosed\n",
                                  "a: !!python/object:os.system x\n", "---\na: 1\n---\nb: 2\n"])
def test_not_a_mapping_or_not_yaml(tmp_path, text):
    error_of(write(tmp_path, text))
