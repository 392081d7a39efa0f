#!/usr/bin/python
"""Ansible module: shard a collection on a key through mongos, idempotently.

community.mongodb has no module for shardCollection. This one reads
config.collections first: a collection already sharded on the same key is left
alone; one sharded on a different key is a conflict and fails (resharding is a
deliberate, separate operation), never silently kept or changed.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: mongodb_sharded_collection
short_description: Shard a MongoDB collection on a key through mongos
description:
  - Runs shardCollection through mongos when the collection is not sharded yet. One already sharded on
    the same key is left alone; one sharded on another key fails (no implicit resharding). Supports check mode.
options:
  namespace: {description: "database.collection", required: true, type: str}
  key: {description: "shard key, e.g. {user_id: hashed}", required: true, type: dict}
  login_host: {description: Address of the mongos to talk to, type: str, default: 127.0.0.1}
  login_port: {description: Its port, type: int, default: 27017}
  login_user: {description: A user allowed to shard collections, type: str, required: true}
  login_password: {description: Its password, type: str, required: true, no_log: true}
  tls: {description: Connect with TLS, type: bool, default: false}
  tls_ca_file: {description: CA file that signed the mongos certificate, type: str}
"""

EXAMPLES = r"""
- name: Shard app.events on a hashed user_id through the local mongos
  mongodb_sharded_collection:
    namespace: app.events
    key: {user_id: hashed}
    login_port: 27017
    login_user: admin
    login_password: "{{ mongo_admin_password }}"
    tls: true
    tls_ca_file: /etc/mongodb/tls/ca.crt
"""

RETURN = r"""
namespace: {description: The collection, database.collection, type: str, returned: success}
key:
  description: The shard key it is (or, when changed, will be) sharded on, field -> 1, -1 or hashed.
  type: dict
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule


def normalise(key: dict) -> list[tuple[str, object]]:
    return [(field, "hashed" if value == "hashed" else int(value)) for field, value in key.items()]


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            namespace=dict(type="str", required=True),
            key=dict(type="dict", required=True),
            login_host=dict(type="str", default="127.0.0.1"),
            login_port=dict(type="int", default=27017),
            login_user=dict(type="str", required=True),
            login_password=dict(type="str", required=True, no_log=True),
            tls=dict(type="bool", default=False),
            tls_ca_file=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    try:
        from bson.son import SON
        from pymongo import MongoClient
    except ImportError:
        module.fail_json(msg="pymongo is required (python3-pymongo)")
    p = module.params
    database, _, collection = p["namespace"].partition(".")
    if not database or not collection:
        module.fail_json(msg=f"namespace {p['namespace']!r}: expected database.collection")
    wanted = normalise(p["key"])
    options = {"tls": True, "tlsCAFile": p["tls_ca_file"]} if p["tls"] else {}
    client = MongoClient(p["login_host"], p["login_port"], username=p["login_user"], password=p["login_password"],
                         authSource="admin", directConnection=True, serverSelectionTimeoutMS=10000, **options)
    try:
        existing = client.config.collections.find_one({"_id": p["namespace"], "dropped": {"$ne": True}})
        if existing and existing.get("key"):
            have = normalise(dict(existing["key"]))
            if have != wanted:
                module.fail_json(msg=f"{p['namespace']} is sharded on {dict(have)}, the spec says {dict(wanted)}: "
                                     "resharding is not done implicitly")
            module.exit_json(changed=False, namespace=p["namespace"], key=dict(have))
        if not module.check_mode:
            client.admin.command("enableSharding", database)
            client.admin.command("shardCollection", p["namespace"], key=SON(wanted))
        module.exit_json(changed=True, namespace=p["namespace"], key=dict(wanted))
    except Exception as exc:  # pymongo's errors carry the server's message
        module.fail_json(msg=f"{p['namespace']}: {exc}")
    finally:
        client.close()


if __name__ == "__main__":
    main()
