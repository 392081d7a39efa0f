"""Ansible filters: the decision of playbooks/pg_dr_promote.yml, which promotes an ha: manual cluster's standby site
(dr.standby), from what each host of both sites answered by SQL (playbooks/tasks/dr_observe.yml).

Pure functions over plain values, unit-tested in tests/unit/test_dr_manual.py. They take the steps that
dbfleet.reconcile.dr_promote.decide takes (the operator's decision, which `dbfleet dr promote` plans with) from the
same sites; that test checks both agree on every combination of site states, since a filter shipped in the
Ansible collection cannot import the operator.
"""

from __future__ import annotations

from typing import Any


def _truth(value: Any) -> bool:
    """A fact as Ansible may hand it over: a bool, or its text."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return bool(value)


def dr_site(seen: dict[str, Any], hosts: list[str]) -> dict[str, Any]:
    """One site from its hosts' answers (`seen`: host -> {answered, in_recovery, fenced}): reachable when a host
    answered SQL or holds dr promote's fence (a stopped server that answers nothing but is known to be fenced), the
    hosts that accept writes and those in recovery, in the site's order."""
    answered = [h for h in hosts if _truth((seen.get(h) or {}).get("answered"))]
    fenced = [h for h in hosts if _truth((seen.get(h) or {}).get("fenced"))]
    writable = [h for h in answered if not _truth(seen[h].get("in_recovery"))]
    recovering = [h for h in answered if _truth(seen[h].get("in_recovery"))]
    return {"hosts": list(hosts), "reachable": bool(answered or fenced), "writable": writable,
            "recovering": recovering, "fenced": fenced}


def _describe(site: dict[str, Any]) -> str:
    if not site["reachable"]:
        return "unreachable"
    if site["writable"]:
        return f"{', '.join(site['writable'])} accepts writes"
    parts = [f"{', '.join(site['recovering'])} in recovery"] if site["recovering"] else []
    if site["fenced"]:
        parts.append(f"{', '.join(site['fenced'])} fenced")
    return "; ".join(parts) or "no server answers"


def dr_promote_plan(seen: dict[str, Any], primary_hosts: list[str], standby_hosts: list[str], force: Any = False,
                    fence_tried: Any = False) -> dict[str, Any]:
    """The promotion's next step: {step: fence|promote|done|refuse, reason, fence: hosts to fence (the primary
    site's servers that accept writes), promote: the standby site's host to promote (its first in recovery),
    repoint: the standby site's other hosts (they follow the promoted one)}."""
    force, fence_tried = _truth(force), _truth(fence_tried)
    primary, standby = dr_site(seen, primary_hosts), dr_site(seen, standby_hosts)
    to_promote = standby["recovering"][0] if standby["recovering"] else ""
    leader = standby["writable"][0] if standby["writable"] else to_promote
    plan = {"fence": [], "promote": "", "repoint": [h for h in standby_hosts if h != leader],
            "primary_site": _describe(primary), "standby_site": _describe(standby)}

    def step(name: str, reason: str) -> dict[str, Any]:
        acts = {"fence": {"fence": primary["writable"]}, "promote": {"promote": to_promote}}.get(name, {})
        return {**plan, **acts, "step": name, "reason": reason}

    if standby["writable"]:
        if primary["reachable"] and primary["writable"]:
            if not fence_tried:
                return step("fence", f"the standby site leads, and the old site answers unfenced "
                                     f"({_describe(primary)}): fence it")
            return step("refuse", f"the old site is not fenced after the fence ({_describe(primary)}): stop its "
                                  "servers by hand")
        return step("done", f"the standby site already leads ({standby['writable'][0]})")
    if not standby["reachable"]:
        return step("refuse", "the standby site does not answer: nothing to promote")
    if not to_promote:
        return step("refuse", f"the standby site has no server in recovery to promote ({_describe(standby)})")
    if not primary["reachable"]:
        if force:
            return step("promote", "the primary site does not answer and force was given: promoting without "
                                   "fencing it")
        return step("refuse", "the primary site does not answer, so whether it still accepts writes cannot be "
                              "known; promote with force once it is surely down or cut off from its clients")
    if primary["writable"]:
        if not fence_tried:
            return step("fence", f"the primary site answers ({_describe(primary)}): fence it first, so it stops "
                                  "accepting writes")
        if force:
            return step("promote", f"the primary site still accepts writes after the fence ({_describe(primary)}) "
                                   "and force was given: promoting anyway")
        return step("refuse", f"the primary site still accepts writes after the fence ({_describe(primary)}); "
                              "refusing to promote a second writer (force promotes anyway)")
    return step("promote", f"the primary site accepts no writes ({_describe(primary)}): promote {to_promote}")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dbfleet_dr_promote_plan": dr_promote_plan}
