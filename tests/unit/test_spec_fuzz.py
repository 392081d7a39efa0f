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


# --------------------------------------------------------------------------- hostile YAML

SMALL = """apiVersion: dbfleet/v1
fleet: {name: fz, region: us-east-1}
clusters:
  - name: pg
    engine: postgres
    hosts: [pg-1, pg-2]
    replicas: 1
    parameters:
      work_mem: 4MB
    backup:
      schedule:
        full: "0 2 * * 0"
      drill: {schedule: "30 4 * * *"}
    monitoring:
      alerts:
        replica_lag_seconds: 30
  - name: mg
    engine: mongo
    config_servers: {name: cfg, members: [cfg-1]}
    shards: [{name: a, members: [a-1]}]
    mongos: [ms-1]
    sharded_collections:
      - database: app
        collection: events
        key: {user_id: hashed}
        zones:
          eu: []
"""
"""A small valid spec, so 2,000 hostile variants parse in seconds (the example takes ~25 ms a parse)."""
VALUE_LINES = [i for i, line in enumerate(SMALL.splitlines()) if ": " in line and not line.rstrip().endswith(":")]


def _laughs(levels: int, width: int) -> str:
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + f", *l{levels - 1}]"


cron_field = st.text(alphabet="0123456789*/-,LW#JANMO", min_size=1, max_size=6)
hostile = st.one_of(
    st.integers(1, 200).map(lambda n: "[" * n + "x" + "]" * n),
    st.integers(1, 20000).map(lambda n: "[" * n),
    st.integers(1, 120).map(lambda n: "{a: " * n + "x" + "}" * n),
    st.builds(_laughs, st.integers(1, 9), st.integers(1, 9)),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "1." + "9" * n),
    st.sampled_from([".inf", "-.inf", ".nan", ".NaN", "1.0e+999", "-1.0e+999", "&x [*x]", "{<<: {a: 1}, a: 2}"]),
    st.lists(cron_field, min_size=5, max_size=5).map(lambda f: '"' + " ".join(f) + '"'),
    st.sampled_from(['"0 0 31 2 *"', '"0 0 30 2 *"', '"0 0 * 2 MON#5"', '"0 0 29 2 *"', '"* * * * * *"']),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALUE_LINES), hostile, st.sampled_from(["replace", "duplicate", "append"]))
def test_hostile_yaml_gives_spec_errors_never_tracebacks(index: int, fragment: str, how: str) -> None:
    lines = SMALL.splitlines()
    key, _, _ = lines[index].partition(": ")
    if how == "replace":
        lines[index] = f"{key}: {fragment}"
    elif how == "duplicate":
        lines.insert(index + 1, f"{key}: {fragment}")
    else:
        lines.append(f"x: {fragment}")
    _load("\n".join(lines) + "\n")


def test_the_small_spec_is_valid() -> None:
    assert isinstance(parse_fleet(SMALL, "small.yaml"), Fleet)
