#!/usr/bin/python
"""Ansible module: record what a full converge left on a host, or check that it is still so.

`configure --fast` (README, "Converge speed") skips the roles on a cluster whose
hosts all still hold what the last full converge of the same inputs left there.
This module is both halves, in one call per host:

- `record`, at the end of a full converge: observe the host and write the
  observation, with the digest of the converge's inputs, to `path` (root only).
- `check`, at the start of a `--fast` run: observe the host again and compare.
  It is in sync only when the record exists, was made from the same inputs, and
  every observed item is equal. Anything unreadable counts as drift.

What is observed: every file, directory and symlink below `roots` (content
digest, mode, owner, group, link target), the unit files' states and the running
services, the installed packages, and, where asked, PostgreSQL's roles,
memberships, databases, extensions, schemas, settings, HBA rules and slots,
Patroni's dynamic configuration, Redis's CONFIG, ACL and role, and Sentinel's
settings for its master. The record only ever says what was there right after a
converge that succeeded, so an equal observation means the same state.

Writing the record is bookkeeping, not a change to what the roles manage: it
reports changed=false, so a no-op converge stays changed=0.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import os
import re
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: converge_state
short_description: Record the state a full converge left on a host, or check it is unchanged
description:
  - C(record) writes what it observes, with the digest of the converge's inputs, to I(path).
  - C(check) observes again and reports C(in_sync) and the items that differ.
  - Writing the record reports changed=false; it is dbfleet's bookkeeping, not managed state.
options:
  mode: {description: record or check, type: str, required: true, choices: [record, check]}
  inputs:
    description: Digest of the converge's inputs (playbooks, inventory, secrets, rules)
    type: str
    required: true
  path: {description: Where the record lives on the host, type: path, default: /var/lib/dbfleet/converge-state.json}
  roots:
    description: Files and directories whose content, mode and owner are observed
    type: list
    elements: path
    default: []
  exclude:
    description: Paths below the roots that are not observed (files a daemon rewrites)
    type: list
    elements: path
    default: []
  renew_days:
    description: A certificate below the roots that expires within this many days is drift (the pki role's renew_days)
    type: int
    default: 30
  postgres: {description: "PostgreSQL on this host: {port, socket_dir}", type: dict}
  patroni: {description: "Patroni's REST API: {url, ca_file}", type: dict}
  redis: {description: "Redis data node: {port, user, password, tls, ca_file}", type: dict, no_log: true}
  sentinel: {description: "Sentinel: {port, password, tls, ca_file, master}", type: dict, no_log: true}
"""

EXAMPLES = r"""
- converge_state:
    mode: check
    inputs: 3f1c0d9e
    roots: [/etc/redis, /etc/systemd/system]
    exclude: [/etc/redis/sentinel.conf]
    redis: {port: 6379, user: dbfleet_admin, password: secret, tls: true, ca_file: /etc/dbfleet/redis-tls/ca.crt}
  register: converge_state_check
"""

RETURN = r"""
in_sync: {description: check only; the host holds what the record says, type: bool, returned: always}
drift: {description: check only; what differs (item names, never values), type: list, returned: always}
items: {description: how many items were observed, type: int, returned: always}
"""

FORMAT = 1
"""The record's layout; a record of another format is drift."""

ERROR = "unreadable: "


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def observe_path(path: str) -> str:
    """One line for a file, directory or symlink: kind, mode, owner, group and its content's digest or target."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"{ERROR}{exc.strerror}"
    owner = f"{stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}"
    if stat.S_ISLNK(st.st_mode):
        return f"l {owner} {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"d {owner}"
    if stat.S_ISREG(st.st_mode):
        sha = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 16), b""):
                    sha.update(block)
        except OSError as exc:
            return f"{ERROR}{exc.strerror}"
        return f"f {owner} {sha.hexdigest()}"
    return f"o {owner}"


def observe_files(roots: list[str], exclude: list[str]) -> dict[str, str]:
    """`file:<path>` for every path at or below each root (a root that is missing is observed as missing)."""
    skip = {os.path.normpath(p) for p in exclude}
    found: dict[str, str] = {}
    for root in roots:
        root = os.path.normpath(root)
        found[f"file:{root}"] = observe_path(root)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if os.path.join(folder, d) not in skip)
            for name in sorted(dirs + files):
                path = os.path.join(folder, name)
                if path not in skip:
                    found[f"file:{path}"] = observe_path(path)
    for path in skip:
        found.pop(f"file:{path}", None)
    return found


PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """One DER element at `at`: (tag, start of its content, end of its content)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    return tag, at, at + length


def not_after(der: bytes) -> float:
    """A certificate's notAfter as a Unix time (RFC 5280: Certificate > TBSCertificate > Validity)."""
    _, tbs, _ = _der(der, 0)
    _, at, _ = _der(der, tbs)
    if der[at] == 0xA0:  # [0] version
        at = _der(der, at)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        at = _der(der, at)[2]
    _, validity, _ = _der(der, at)
    _, start, end = _der(der, _der(der, validity)[2])  # notAfter follows notBefore
    text = der[start:end].decode("ascii")
    if len(text) == 13:  # UTCTime, YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ"))


def regular_files(observed: dict[str, str]) -> list[str]:
    """The paths an observation (observe_files or observe) saw as regular files."""
    return [name.split(":", 1)[1] for name, line in observed.items()
            if name.startswith("file:") and line.startswith("f ")]


def certificates_due(files: list[str], renew_days: int, now: float) -> list[str]:
    """`certificate:<path>` for each of `files` holding a certificate that the pki role would sign again (it
    expires within renew_days) or that cannot be read: that renewal is a converge's work, so it is drift."""
    due: list[str] = []
    for path in files:
        try:
            with open(path, "rb") as handle:
                data = handle.read(1 << 20)
        except OSError:
            continue
        if b"-----BEGIN CERTIFICATE-----" not in data:
            continue
        try:
            ends = [not_after(base64.b64decode(b"".join(m[1].split()))) for m in PEM.finditer(data)]
        except (ValueError, IndexError, UnicodeDecodeError):
            ends = []
        if not ends or min(ends) - now <= renew_days * 86400:
            due.append(f"certificate:{path} (renewal due)")
    return due


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """A command's output, or an unreadable marker with its error (never raises)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              env={**os.environ, "LC_ALL": "C", **(env or {})})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{ERROR}{exc}"
    if done.returncode != 0:
        return f"{ERROR}exit {done.returncode}: {done.stderr.strip()[-200:]}"
    return done.stdout


def observe_system() -> dict[str, str]:
    """Unit files and their states, the running services, and the installed packages."""
    return {
        "units:files": run(["systemctl", "list-unit-files", "--no-legend", "--plain", "--no-pager"]),
        "units:running": run(["systemctl", "list-units", "--type=service", "--state=running", "--no-legend",
                              "--plain", "--no-pager"]),
        "packages": run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n"]),
    }


# Read-only catalog queries. Each one's whole output is one item: any difference is drift.
PG_CLUSTER = {
    "roles": "SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin, "
             "a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolvaliduntil, r.rolconfig, "
             "md5(coalesce(a.rolpassword, '')) FROM pg_authid a JOIN pg_roles r ON r.oid = a.oid ORDER BY 1",
    "memberships": "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a "
                   "JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member ORDER BY 1, 2",
    "databases": "SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, "
                 "datconnlimit, datallowconn, datacl FROM pg_database ORDER BY datname",
    "settings": "SELECT name, setting, source, pending_restart FROM pg_settings "
                "WHERE source NOT IN ('default', 'client', 'session') ORDER BY name",
    "hba": "SELECT line_number, type, database, user_name, address, netmask, auth_method, options, error "
           "FROM pg_hba_file_rules ORDER BY line_number",
    "slots": "SELECT slot_name, slot_type, plugin, database FROM pg_replication_slots WHERE NOT temporary "
             "ORDER BY slot_name",
    "recovery": "SELECT pg_is_in_recovery()",
}
PG_DATABASE = {
    "extensions": "SELECT extname, extversion, extnamespace::regnamespace FROM pg_extension ORDER BY extname",
    "schemas": "SELECT nspname, pg_get_userbyid(nspowner), nspacl FROM pg_namespace ORDER BY nspname",
    "default_acl": "SELECT pg_get_userbyid(defaclrole), defaclnamespace, defaclobjtype, defaclacl "
                   "FROM pg_default_acl ORDER BY 1, 2, 3",
}


def psql_argv(pg: dict[str, Any], sql: str) -> list[str]:
    """psql on the local socket as postgres. The database is never on the command line: psql reads a `-d` value
    with `=` or a URI prefix as a connection string, and database names come from the catalog, where any role
    that may create or rename a database chooses them; PGDATABASE (see psql_env) is never expanded."""
    return ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
            "-h", str(pg.get("socket_dir") or "/var/run/postgresql"), "-p", str(int(pg["port"])), "-c", sql]


def psql_env(database: str) -> dict[str, str]:
    return {"PGDATABASE": database}


def psql(pg: dict[str, Any], database: str, sql: str) -> str:
    return run(psql_argv(pg, sql), psql_env(database))


def observe_postgres(pg: dict[str, Any]) -> dict[str, str]:
    found = {f"postgres:{name}": psql(pg, "postgres", sql) for name, sql in PG_CLUSTER.items()}
    listed = psql(pg, "postgres", "SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database "
                                  "WHERE datallowconn")
    try:
        names = [] if listed.startswith(ERROR) else json.loads(listed)
    except ValueError:
        names, listed = [], f"{ERROR}the database list is not JSON"
    if listed.startswith(ERROR) or not isinstance(names, list):
        found["postgres:database-list"] = listed if listed.startswith(ERROR) else f"{ERROR}not a list"
        return found
    for index, name in enumerate(names):
        for what, sql in PG_DATABASE.items():
            # Item names carry the database's position, not its name, so no catalog text reaches the output.
            found[f"postgres:database-{index}:{what}"] = f"{name}\n{psql(pg, str(name), sql)}"
    return found


def https_json(url: str, ca_file: str) -> str:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            return json.dumps(json.loads(answer.read()), sort_keys=True)
    except (OSError, ValueError) as exc:
        return f"{ERROR}{exc}"


def observe_patroni(patroni: dict[str, Any]) -> dict[str, str]:
    if not str(patroni["url"]).startswith("https://"):
        return {"patroni:config": f"{ERROR}not https"}
    return {"patroni:config": https_json(f"{patroni['url']}/config", str(patroni["ca_file"]))}


def tls_options(tls: bool, ca_file: str | None) -> dict:
    """redis-py's TLS arguments: the chain checked against ca_file, the host name or address against the
    certificate (redis-py 4 on Debian 12 checks no name unless told to)."""
    if not tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def redis_client(conf: dict[str, Any]) -> Any:
    """A client of the server on this host's loopback address, which its certificate names."""
    import redis  # python3-redis: redis_common installs it on every Redis and Sentinel host

    return redis.Redis(host="127.0.0.1", port=int(conf["port"]), username=conf.get("user"),
                       password=conf.get("password"), socket_timeout=5, socket_connect_timeout=5,
                       decode_responses=True, **tls_options(bool(conf.get("tls")), conf.get("ca_file")))


def ask(client: Any, *command: str) -> str:
    try:
        return json.dumps(client.execute_command(*command), sort_keys=True, default=str)
    except Exception as exc:
        return f"{ERROR}{type(exc).__name__}"


def observe_redis(conf: dict[str, Any]) -> dict[str, str]:
    try:
        client = redis_client(conf)
    except ImportError:
        return {"redis:client": f"{ERROR}python3-redis is missing"}
    role = ask(client, "ROLE")
    if not role.startswith(ERROR):
        # ROLE's replication offsets move with every write; what it says about the topology does not.
        answer = json.loads(role)
        role = json.dumps(answer[:3] if answer and answer[0] == "slave" else answer[:1])  # role, master host, port
    return {"redis:config": ask(client, "CONFIG", "GET", "*"), "redis:acl": ask(client, "ACL", "LIST"),
            "redis:role": role}


SENTINEL_SETTINGS = ("name", "ip", "port", "quorum", "down-after-milliseconds", "failover-timeout",
                     "parallel-syncs", "auth-user")
"""What SENTINEL MASTER reports that the role sets or that only a failover changes (not epochs or counters)."""


def observe_sentinel(conf: dict[str, Any]) -> dict[str, str]:
    try:
        client = redis_client({**conf, "user": None})
    except ImportError:
        return {"sentinel:client": f"{ERROR}python3-redis is missing"}
    answer = ask(client, "SENTINEL", "MASTER", str(conf["master"]))
    if answer.startswith(ERROR):
        return {"sentinel:master": answer}
    reply = json.loads(answer)
    fields = dict(zip(reply[::2], reply[1::2], strict=False)) if isinstance(reply, list) else reply
    return {"sentinel:master": json.dumps({k: fields.get(k) for k in SENTINEL_SETTINGS}, sort_keys=True)}


def observe(params: dict[str, Any]) -> dict[str, str]:
    """Every item of the host, as name -> what is compared. A file's line holds only its digest, mode and owner; every
    other item is kept as the digest of its text, since some hold secrets (CONFIG GET * lists masterauth)."""
    found = observe_files(params["roots"], params["exclude"])
    if params.get("path"):  # the record and its temporary files, when they lie below a root
        folder = os.path.dirname(os.path.normpath(params["path"]))
        found = {name: line for name, line in found.items()
                 if not (name == f"file:{os.path.normpath(params['path'])}"
                         or name.startswith(f"file:{folder}/.converge-state."))}
    found.update(observe_system())
    if params.get("postgres"):
        found.update(observe_postgres(params["postgres"]))
    if params.get("patroni"):
        found.update(observe_patroni(params["patroni"]))
    if params.get("redis"):
        found.update(observe_redis(params["redis"]))
    if params.get("sentinel"):
        found.update(observe_sentinel(params["sentinel"]))
    return {name: text if name.startswith("file:") or text.startswith(ERROR) else "sha256:" + digest(text.encode())
            for name, text in found.items()}


def compare(record: dict[str, Any] | None, inputs: str, now: dict[str, str]) -> list[str]:
    """What keeps the host from being in sync: [] only when the record holds the same inputs and items."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return ["no record of a full converge"]
    if record.get("inputs") != inputs:
        return ["the converge's inputs changed"]
    then = record.get("items")
    if not isinstance(then, dict):
        return ["no record of a full converge"]
    drift = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
    unreadable = sorted(name for name, text in now.items() if text.startswith(ERROR))
    return drift + [f"{name} (unreadable)" for name in unreadable if name not in drift]


def read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: str, inputs: str, items: dict[str, str]) -> None:
    """The record, whole or not at all: a new 0600 file (mkstemp) beside it, then renamed over it."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".converge-state.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"format": FORMAT, "inputs": inputs, "items": items}, handle, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": ["record", "check"]},
            "inputs": {"type": "str", "required": True},
            "path": {"type": "path", "default": "/var/lib/dbfleet/converge-state.json"},
            "roots": {"type": "list", "elements": "path", "default": []},
            "exclude": {"type": "list", "elements": "path", "default": []},
            "renew_days": {"type": "int", "default": 30},
            "postgres": {"type": "dict"},
            "patroni": {"type": "dict"},
            "redis": {"type": "dict", "no_log": True},
            "sentinel": {"type": "dict", "no_log": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    now = observe(p)
    if p["mode"] == "record":
        if not module.check_mode:
            write_record(p["path"], p["inputs"], now)
        module.exit_json(changed=False, in_sync=True, drift=[], items=len(now))
    drift = compare(read_record(p["path"]), p["inputs"], now)
    drift += certificates_due(regular_files(now), p["renew_days"], time.time())
    module.exit_json(changed=False, in_sync=not drift, drift=drift[:20], items=len(now))


if __name__ == "__main__":
    main()
