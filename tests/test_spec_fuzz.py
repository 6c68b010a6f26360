"""The spec parser under fuzzing: YAML-ish text, arbitrary text and bytes, YAML of odd Python values,
spec-shaped documents and raw Python data. load_spec and parse_spec raise nothing but SpecError, and
each of its lines names where the problem is: the file, the YAML, or a field path that exists.

test_spec.py has the examples and JSON-like data; this file goes after what YAML adds (tags, aliases,
anchors, merge keys, timestamps, sets, binary, huge numbers) and what Python data can hold (depth,
cycles, non-text keys). GPUROAM_FUZZ_EXAMPLES sets the examples per test.
"""

from __future__ import annotations

import datetime
import decimal
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from fuzzing import fuzz_settings
from gpuroam.spec import ServiceSpec, SpecError, load_spec, parse_spec
from gpuroam.spec_problems import section as _section

DEFAULT_EXAMPLES = 150
FILE_LEVEL = ("invalid YAML", "the file is empty", "the top level must be a mapping", "file not found", "cannot read")
FIELDS = sorted(
    {name for section in ServiceSpec.model_fields if (m := _section(ServiceSpec, section)) for name in m.model_fields}
    | set(ServiceSpec.model_fields)
)


def known_path(path: str) -> bool:
    """`resources.gpus[1]`, `replicas.max`, `app`: a path through the spec's sections to a field."""
    parts = [p for p in re.split(r"\.|\[\d+\]", path) if p]
    model: type[BaseModel] | None = ServiceSpec
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return False
        model = _section(model, part) if i < len(parts) - 1 else None
    return bool(parts)


def assert_names_its_fields(error: SpecError, source: str) -> None:
    assert error.problems, "a SpecError with nothing to say"
    for line in str(error).splitlines():
        assert line.startswith(f"spec {source}: "), line
    for problem in error.problems:
        if problem.startswith(FILE_LEVEL):
            continue
        if problem.startswith("unknown field "):
            where = re.match(r"unknown field .* under (.*?); ", problem)
            assert where and (where[1] == "(top level)" or known_path(where[1])), problem
            continue
        path, sep, what = problem.partition(": ")
        assert sep and what, problem
        assert path == "(top level)" or known_path(path), f"{problem!r} does not name a field"


@pytest.fixture(scope="module")
def spec_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "fuzz.yaml"


def load_text(path: Path, data: str | bytes) -> None:
    """load_spec on `data`: a spec, or a SpecError that names its fields; nothing else."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    try:
        spec = load_spec(path)
    except SpecError as error:
        assert_names_its_fields(error, str(path))
    else:
        assert isinstance(spec, ServiceSpec)


# --- YAML-ish text -----------------------------------------------------------------------------
YAML_TOKENS = [
    ": ", ":", "- ", "-", "\n", "\n  ", "\n    ", "\n- ", "  ", "\t", "[", "]", "{", "}", ", ", "'", '"', "#",
    "&a ", "*a", "&b ", "*b", "<<: ", "<<: *a", "? ", "--- ", "...", "|\n  ", ">\n  ", "%YAML 1.1\n", "%TAG ! x\n",
    "!!binary ", "!!set ", "!!omap ", "!!pairs ", "!!timestamp ", "!!float ", "!!int ", "!!str ", "!!map ", "!!seq ",
    "!!python/object:os.system ", "!!python/name:os.system ", "!custom ", "~", "null", "true", "no", "on",
    "0", "-1", "0x1F", "0o17", "1_000", "1e400", ".nan", "-.inf", "9" * 5000, "2020-13-45", "2001-12-14t21:59:43.10-05:00",
    "2020-01-01 25:61:61", "aGVsbG8=", "nvidia-l4", "us-*", "/internal/ping", "\x00", "\ufeff", "\u2028", "\x85", "é",
]  # fmt: skip
yaml_ish = st.lists(st.sampled_from(YAML_TOKENS) | st.sampled_from(FIELDS) | st.text(max_size=4), max_size=40).map(
    "".join
)


def test_yaml_ish_text_loads_or_raises_spec_error(spec_file: Path) -> None:
    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(text=yaml_ish)
    def fuzz(text: str) -> None:
        load_text(spec_file, text)

    fuzz()


def test_any_text_or_bytes_loads_or_raises_spec_error(spec_file: Path) -> None:
    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(data=st.text(st.characters(exclude_categories=[]), max_size=200) | st.binary(max_size=200))
    def fuzz(data: str | bytes) -> None:
        load_text(spec_file, data)

    fuzz()


# --- YAML of odd Python values, shaped like a spec ---------------------------------------------
odd_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=8)
    | st.dates()
    | st.datetimes()
    | st.sampled_from(FIELDS)
    | st.sampled_from(["nvidia-l4", "us-*", "sd-webui", "tiny", "/internal/ping"])
)
odd_values = st.recursive(
    odd_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers() | st.none(), inner, max_size=4)
        | st.sets(st.integers() | st.text(max_size=4), max_size=3)
    ),
    max_leaves=16,
)


def section_of(model: type[BaseModel]) -> st.SearchStrategy[dict[Any, Any]]:
    keys = st.sampled_from(list(model.model_fields)) | st.sampled_from(FIELDS) | st.text(max_size=6)
    return st.dictionaries(keys, odd_values, max_size=6)


spec_shaped = st.fixed_dictionaries(
    {},
    optional={
        name: (section_of(section) | odd_values) if (section := _section(ServiceSpec, name)) else odd_values
        for name in ServiceSpec.model_fields
    },
)


def test_yaml_of_odd_values_loads_or_raises_spec_error(spec_file: Path) -> None:
    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(data=spec_shaped | odd_values)
    def fuzz(data: Any) -> None:
        load_text(spec_file, yaml.dump(data, allow_unicode=True))  # yaml.dump: Python tags too (tuples, sets)

    fuzz()


# --- Python data that YAML or JSON can produce, and more ---------------------------------------
class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("a repr that fails")


# (Values whose repr fails, or an int past 4300 digits, are in the regressions below: hypothesis itself
# cannot show them.)
exotic_leaves = odd_leaves | st.sampled_from(
    [decimal.Decimal("1.5"), complex(1, 2), frozenset({1}), (1, 2), b"\xff", bytearray(b"x"), float("nan"),
     float("inf"), datetime.timedelta(1), object(), Ellipsis, NotImplemented, type]
)  # fmt: skip
exotic = st.recursive(
    exotic_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.sampled_from(FIELDS) | st.integers() | st.none() | st.tuples(st.integers()) | st.booleans(),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


def deep(depth: int, make: Any) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = make(value)
    return value


@st.composite
def spec_data(draw: st.DrawFn) -> Any:
    base: dict[Any, Any] = {"name": "sd", "resources": {"gpus": ["nvidia-l4"]}}
    where = draw(st.sampled_from([(), ("name",), ("resources", "gpus"), ("app", "args"), ("placement",), ("zzz",)]))
    value = draw(
        exotic
        | st.builds(deep, st.integers(1, 5000), st.sampled_from([lambda v: [v], lambda v: {"a": v}, lambda v: (v,)]))
    )
    if not where:
        return value
    node = base
    for part in where[:-1]:
        node = node.setdefault(part, {})
    node[where[-1]] = value
    return base


def test_any_python_data_parses_or_raises_spec_error() -> None:
    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(data=spec_data() | spec_shaped)
    def fuzz(data: Any) -> None:
        try:
            spec = parse_spec(data, source="fuzz")
        except SpecError as error:
            assert_names_its_fields(error, "fuzz")
        else:
            assert isinstance(spec, ServiceSpec)

    fuzz()


# --- what the fuzzing found ---------------------------------------------------------------------
ALIAS_BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[" * 20_000 + "]" * 20_000, "nested too deeply", id="nesting-recursed-in-pyyaml"),
        pytest.param("name: sd\nresources: {gpus: [" + "[" * 5_000 + "]" * 5_000 + "]}\n", "nested", id="deep-gpus"),
        pytest.param("name: sd\nplacement: {race: " + "9" * 5000 + "}\n", "4300 digits", id="int-past-4300-digits"),
        pytest.param("name: 2020-13-45\nresources: {gpus: [nvidia-l4]}\n", "month must be", id="impossible-date"),
        pytest.param("name: !!timestamp x\n", "cannot read (AttributeError", id="timestamp-tag-on-text"),
        pytest.param('name: !!int ""\n', "cannot read (IndexError", id="int-tag-on-empty"),
        pytest.param("name: sd\x08\n", "unacceptable character #x0008", id="reader-error-spanned-two-lines"),
        pytest.param(
            "a: &a [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB + "name: sd\nresources: {gpus: *i}\n",
            "resources.gpus[0]: input should be a valid string (got [[[",
            id="alias-bomb-shown-not-expanded",
        ),
    ],
)
def test_yaml_found_by_fuzzing_is_a_spec_error(spec_file: Path, text: str, expected: str) -> None:
    spec_file.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file)
    assert expected in str(caught.value)
    assert all(line.startswith(f"spec {spec_file}: ") for line in str(caught.value).splitlines())
    assert max(map(len, caught.value.problems)) < 400, "a problem is a line, not a dump of the input"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"name": deep(5000, lambda v: [v]), "resources": {"gpus": ["a"]}}, id="deep-list-repr-recursed"),
        pytest.param({"name": 10**5000, "resources": {"gpus": ["a"]}}, id="int-repr-past-4300-digits"),
        pytest.param({"name": [Opaque()], "resources": {"gpus": ["a"]}}, id="repr-that-raises-in-a-list"),
    ],
)
def test_data_found_by_fuzzing_is_a_spec_error(data: Any) -> None:
    with pytest.raises(SpecError, match=r"name: input should be a valid string \(got "):
        parse_spec(data)
