"""Property tests: whatever the loader gets, it returns a Fleet or raises SpecError, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbfleet.spec import Fleet, SpecError, parse_fleet

EXAMPLE_TEXT = (Path(__file__).resolve().parents[2] / "fleet.example.yaml").read_text()
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _load(text: str) -> None:
    try:
        result = parse_fleet(text, "fuzz.yaml")
    except SpecError as err:
        rendered = str(err)
        assert rendered and all(line.startswith("fuzz.yaml") for line in rendered.splitlines())
        return
    assert isinstance(result, Fleet)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(EXAMPLE_TEXT) - 1), st.integers(1, 40), st.text(max_size=12))
def test_mangled_example(at: int, cut: int, insert: str) -> None:
    _load(EXAMPLE_TEXT[:at] + insert + EXAMPLE_TEXT[at + cut:])


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = [p for p in _paths(EXAMPLE) if p]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PATHS), values)
def test_any_value_at_any_key(path: tuple, value: Any) -> None:
    import copy

    data = copy.deepcopy(EXAMPLE)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    _load(text)
