"""The file format of the Ansible inventory dbfleet writes: spec strings are data, tagged so Ansible never
templates them.

Every string that comes from the spec is marked SpecText; hosts.yml carries
it tagged `!unsafe`, and the JSON an inventory script prints wraps it as
`{"__ansible_unsafe": ...}`. So `{{ lookup('pipe', ...) }}` in a parameter
reaches postgresql.conf as text and never runs. dbfleet's own connection
variables stay plain strings. Writing (dbfleet.inventory) and reading (the
access layer, dbfleet.engines.access) share this one definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class SpecText(str):
    """A string that came from the spec: written for Ansible as `!unsafe`, so it is never templated."""


def from_spec(value: Any) -> Any:
    """`value` (a model dump) with every string in it, at any depth, marked SpecText; keys stay plain, since
    Ansible does not template mapping keys."""
    if isinstance(value, str):
        return SpecText(value)
    if isinstance(value, dict):
        return {key: from_spec(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_spec(item) for item in value]
    return value


class _InventoryDumper(yaml.SafeDumper):
    """YAML for Ansible: a SpecText is written `!unsafe '...'`; an empty one plain `''`."""


def _represent_spec_text(dumper: yaml.SafeDumper, value: SpecText) -> yaml.Node:
    if not value:
        # ansible-core 2.19 loads `!unsafe ''` as None (a role's `x | length` then fails); an empty string holds
        # nothing to template, so it is written plain.
        return dumper.represent_str("")
    return dumper.represent_scalar("!unsafe", str(value), style="'")


_InventoryDumper.add_representer(SpecText, _represent_spec_text)


class InventoryLoader(yaml.SafeLoader):
    """Reads a hosts.yml dbfleet wrote: an `!unsafe` string comes back as a plain string."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!unsafe tags a string here", node.start_mark)
    return str(loader.construct_scalar(node))


InventoryLoader.add_constructor("!unsafe", _plain)


def inventory_yaml(inventory: dict[str, Any]) -> str:
    """The inventory as YAML for Ansible, spec strings tagged `!unsafe`."""
    return yaml.dump(inventory, Dumper=_InventoryDumper, sort_keys=False, width=4096)  # a value, one line


def inventory_json_value(value: Any) -> Any:
    """`value` for the JSON an inventory script prints: a SpecText becomes `{"__ansible_unsafe": text}`, the form
    Ansible's script inventory reads as not to be templated."""
    if isinstance(value, SpecText):
        return {"__ansible_unsafe": str(value)} if value else ""  # empty: as inventory_yaml writes it
    if isinstance(value, dict):
        return {key: inventory_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [inventory_json_value(item) for item in value]
    return value


def load_inventory(path: Path) -> dict[str, Any]:
    """A hosts.yml written by write_inventory, `!unsafe` strings read as plain strings."""
    return yaml.load(path.read_text(), Loader=InventoryLoader) or {}
