"""What the role tests share: a role's own Ansible module loaded as Python, inventory values marked trusted
the way Ansible's loader marks a file's values, so the templates render them, and a cluster's role inputs with
some of its spec changed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from ansible.template import trust_as_template
from pydantic import ValidationError

from dbfleet.engines.base import AnyCluster
from dbfleet.inventory import cluster_vars

ROLES = Path(__file__).resolve().parents[2] / "playbooks" / "roles"


def role_module(role: str, name: str) -> ModuleType:
    """playbooks/roles/<role>/library/<name>.py, imported."""
    spec = importlib.util.spec_from_file_location(name, ROLES / role / "library" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def role_inputs(cluster: AnyCluster, **spec: Any) -> dict[str, Any]:
    """The inventory's group vars for `cluster` with the spec keys in `spec` changed, as dbfleet.role_inputs maps
    them: validated as the loader would, or, for a value the loader refuses (a test that the templates hold even
    that), set as it is."""
    try:
        changed = type(cluster).model_validate({**cluster.model_dump(mode="json"), **spec})
    except ValidationError:
        changed = cluster.model_copy(update=spec)
    return cluster_vars(changed)


def trusted(value: Any) -> Any:
    """`value` with every string in it trusted as a template, dicts and lists walked."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [trusted(v) for v in value]
    return value
