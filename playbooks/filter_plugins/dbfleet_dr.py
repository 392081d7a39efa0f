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


CLEAN_STOPS = ("shut down", "shut down in recovery")
"""pg_controldata's "Database cluster state" after a clean shutdown: only then is its "Latest checkpoint location"
the last record the server wrote (after a crash, or a stop cut short, records may follow it)."""


def lsn_number(lsn: Any) -> int:
    """A PostgreSQL LSN ('16/B374D848') as a number to compare; -1 when unknown."""
    try:
        high, low = str(lsn).split("/")
        return (int(high, 16) << 32) + int(low, 16)
    except ValueError:
        return -1


def dr_site(seen: dict[str, Any], hosts: list[str]) -> dict[str, Any]:
    """One site from its hosts' answers (`seen`: host -> {answered, in_recovery, fenced, reached, replay_lsn}):
    known when every host answered SQL or holds dr promote's fence (a stopped server that answers nothing but is
    known fenced); `silent`: the hosts that did neither, whose state is unknown; `reachable`: some host is known;
    the hosts that accept writes, those in recovery (furthest replayed first), those fenced, and those Ansible
    reached that are not fenced yet, in the site's order."""
    info = {h: seen.get(h) or {} for h in hosts}
    fenced = [h for h in hosts if _truth(info[h].get("fenced"))]
    answered = [h for h in hosts if _truth(info[h].get("answered")) and h not in fenced]
    writable = [h for h in answered if not _truth(info[h].get("in_recovery"))]
    recovering = sorted((h for h in answered if _truth(info[h].get("in_recovery"))),
                        key=lambda h: -lsn_number(info[h].get("replay_lsn")))
    silent = [h for h in hosts if h not in answered and h not in fenced]
    unfenced = [h for h in hosts if h not in fenced and (h in answered or _truth(info[h].get("reached")))]
    return {"hosts": list(hosts), "reachable": bool(answered or fenced), "known": not silent, "silent": silent,
            "writable": writable, "recovering": recovering, "fenced": fenced, "unfenced": unfenced}


def _describe(site: dict[str, Any]) -> str:
    if not site["reachable"]:
        return "unreachable"
    parts = [f"{', '.join(site['writable'])} accepts writes"] if site["writable"] else []
    if site["recovering"]:
        parts.append(f"{', '.join(site['recovering'])} in recovery")
    if site["fenced"]:
        parts.append(f"{', '.join(site['fenced'])} fenced")
    if site["silent"]:
        parts.append(f"{', '.join(site['silent'])} does not answer")
    return "; ".join(parts)


def dr_promote_plan(seen: dict[str, Any], primary_hosts: list[str], standby_hosts: list[str], force: Any = False,
                    fence_tried: Any = False) -> dict[str, Any]:
    """The promotion's next step: {step: fence|promote|done|refuse, reason, fence: the primary site's hosts to fence
    (every one Ansible reached that is not fenced yet, whatever SQL said), promote: the standby site's host to
    promote (the one in recovery that replayed furthest), repoint: the standby site's other hosts (they follow
    the promoted one), catch_up: each fenced primary-site host's stop LSN, which the host to promote must have
    replayed first, unclean: the fenced hosts whose server did not stop cleanly (their stop LSN may not be their
    last record)}.

    The primary site is known only when every host of it answered or is fenced: a server that does not answer
    SQL (max_connections, a pg_hba or TLS fault for the operator only, a cut network) may still accept writes from
    its clients, so without force that refuses; with force the promotion goes ahead, its reachable hosts fenced
    first. A site whose servers all answer is promoted over only once every one is fenced (a server in recovery
    there could be promoted by hand later)."""
    force, fence_tried = _truth(force), _truth(fence_tried)
    primary, standby = dr_site(seen, primary_hosts), dr_site(seen, standby_hosts)
    to_promote = standby["recovering"][0] if standby["recovering"] else ""
    leader = standby["writable"][0] if standby["writable"] else to_promote
    stopped = {h: (seen.get(h) or {}) for h in primary["fenced"]}
    plan = {"fence": [], "promote": "", "repoint": [h for h in standby_hosts if h != leader],
            "primary_site": _describe(primary), "standby_site": _describe(standby),
            "catch_up": {h: str(s.get("stop_lsn") or "") for h, s in stopped.items()},
            "unclean": [h for h, s in stopped.items() if str(s.get("stop_state") or "").strip() not in CLEAN_STOPS]}

    def step(name: str, reason: str) -> dict[str, Any]:
        acts = {"fence": {"fence": primary["unfenced"]}, "promote": {"promote": to_promote, "fence":
                                                                       primary["unfenced"]},
                "done": {"fence": primary["unfenced"]}}.get(name, {})
        return {**plan, **acts, "step": name, "reason": reason}

    unfenced = primary["known"] and bool(primary["writable"] or primary["recovering"])
    if standby["writable"]:
        if unfenced:
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
    if not primary["known"]:
        if force:
            return step("promote", f"the primary site does not answer in full ({_describe(primary)}) and force was "
                                   "given: promoting, its hosts that Ansible reaches fenced first")
        return step("refuse", f"the primary site does not answer in full ({_describe(primary)}), so whether it "
                              "still accepts writes cannot be known; promote with force once it is surely down or "
                              "cut off from its clients")
    if unfenced:
        if not fence_tried:
            return step("fence", f"the primary site answers ({_describe(primary)}): fence it first, so it stops "
                                  "accepting writes")
        if force:
            return step("promote", f"the primary site is not fenced after the fence ({_describe(primary)}) "
                                   "and force was given: promoting anyway")
        return step("refuse", f"the primary site is not fenced after the fence ({_describe(primary)}); "
                              "refusing to promote beside it (force promotes anyway)")
    return step("promote", f"the primary site is fenced ({_describe(primary)}): promote {to_promote}")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dbfleet_dr_promote_plan": dr_promote_plan}
