"""The fleet spec loader: the example is valid, and each kind of bad input gets a located error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dbfleet.spec import PostgresCluster, RedisCluster, SpecError, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "fleet.example.yaml").read_text()


def test_example_is_the_lab_topology() -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    pg = fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster)
    assert pg.primary == "pg-1" and pg.replicas == 2 and pg.host_names() == ["pg-1", "pg-2", "pg-3"]
    mongo = fleet.cluster("mongo-main")
    assert len(mongo.config_servers.members) >= 1 and len(mongo.shards) == 2 and len(mongo.mongos) == 1
    redis = fleet.cluster("cache")
    assert isinstance(redis, RedisCluster)
    assert redis.replicas == 2 and len(redis.sentinels) == 3 and redis.effective_quorum == 2


def _error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_fleet(text, "fleet.yaml")
    return info.value


# (name, edit of the example, key path in the error, words the message must contain)
BAD_INPUTS = [
    ("unknown key", ("    ha: manual\n", "    ha: manual\n    colour: blue\n"), "clusters.0.colour", "unknown key"),
    ("wrong type", ("replicas: 2\n    databases", "replicas: two\n    databases"), "clusters.0.replicas",
     "expected a whole number"),
    ("negative count", ("replicas: 2\n    databases", "replicas: -1\n    databases"), "clusters.0.replicas", ">= 0"),
    ("duplicate host", ("[redis-1, redis-2, redis-3]", "[redis-1, pg-2, redis-3]"), "clusters.2",
     "already used by cluster 'pg-main'"),
    ("unknown engine version", ('version: "15"', 'version: "9.6"'), "clusters.0.version", "not supported"),
    ("replicas above hosts", ("replicas: 2\n    databases", "replicas: 5\n    databases"), "clusters.0.replicas",
     "need 6 hosts"),
    ("bad cron", ('"0 2 * * 0"', '"0 25 * * 0"'), "clusters.0.backup.schedule.full", "outside 0-23"),
    ("unknown engine", ("engine: redis", "engine: memcached"), "clusters.2.engine", "got 'memcached'"),
    ("missing key", ("    config_servers: {name: cfg, members: [mongo-cfg-1]}\n", ""),
     "clusters.1.config_servers", "required"),
    ("unknown backup target", ("{kind: local, path: /var/lib/dbfleet/backups}", "{kind: ftp, path: x}"),
     "clusters.0.backup.target.kind", "got 'ftp'"),
    ("quorum above sentinels", ("quorum: 2", "quorum: 5"), "clusters.2.quorum", "more than the 3 sentinels"),
    ("index on undeclared database", ("{database: app, table: users", "{database: nope, table: users"),
     "clusters.0.indexes.declared.0.database", "not one of databases"),
    ("bad host name", ("[pg-1, pg-2, pg-3]", "[pg-1, PG_2, pg-3]"), "clusters.0.hosts.1", "does not match"),
    ("open to the world", ("    databases: [app]\n", "    databases: [app]\n    allowed_clients: [0.0.0.0/0]\n"),
     "clusters.0.allowed_clients", "every address"),
    ("managed parameter", ("      max_connections: 100\n", "      max_connections: 100\n      port: 6000\n"),
     "clusters.0.parameters", "managed by dbfleet"),
    ("min replicas to write above replicas", ("min_replicas_to_write: 1", "min_replicas_to_write: 3"),
     "clusters.2.min_replicas_to_write", "never accept a write"),
    ("canary not a table", ("canary: public.canary}", "canary: 'public.canary; drop table x'}"),
     "clusters.0.backup.drill.canary", "'schema.table'"),
    ("canary in an undeclared database", ("canary: public.canary}", "canary: other.public.canary}"),
     "clusters.0.backup.drill.canary", "not one of databases"),
    ("mongo canary without a database", ("canary: app.events}", "canary: events}"),
     "clusters.1.backup.drill.canary", "'database.collection'"),
    ("patroni not implemented", ("    ha: manual\n", "    ha: patroni\n"), "clusters.0.ha", "not implemented yet"),
    ("redis tls not implemented", ("min_replicas_to_write: 1", "min_replicas_to_write: 1\n    tls: {enabled: true}"),
     "clusters.2.tls.enabled", "not implemented yet"),
    ("wrong api version", ("apiVersion: dbfleet/v1", "apiVersion: dbfleet/v9"), "apiVersion", "dbfleet/v1"),
    ("not a pgaudit class", ("audit: {log: [ddl, role]}", "audit: {log: [ddl, roles]}"), "clusters.0.audit.log.1",
     "'roles' is not a pgaudit class"),
    ("pgaudit class as config-file text", ("audit: {log: [ddl, role]}", "audit: {log: [\"ddl'\\nssl = off\"]}"),
     "clusters.0.audit.log.0", "not a pgaudit class"),
    ("pgaudit class twice", ("audit: {log: [ddl, role]}", "audit: {log: [ddl, role, ddl]}"), "clusters.0.audit.log",
     "ddl listed more than once"),
    ("pgaudit subtracting only", ("audit: {log: [ddl, role]}", "audit: {log: [-misc]}"), "clusters.0.audit.log",
     "only subtracted classes"),
    ("pgaudit without classes", ("audit: {log: [ddl, role]}", "audit: {log: []}"), "clusters.0.audit.log",
     "at least 1"),
    ("pgaudit unknown setting", ("audit: {log: [ddl, role]}", "audit: {log: [ddl], log_level: debug5}"),
     "clusters.0.audit.log_level", "unknown key"),
    ("pgaudit setting in parameters", ("      max_connections: 100\n", "      max_connections: 100\n"
                                       "      pgaudit.log: none\n"), "clusters.0.parameters", "audit section"),
    ("preload libraries in parameters", ("      max_connections: 100\n", "      max_connections: 100\n"
                                         "      shared_preload_libraries: auto_explain\n"), "clusters.0.parameters",
     "managed by dbfleet"),
]


@pytest.mark.parametrize("name,edit,path,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_located_error(name: str, edit: tuple[str, str], path: str, words: str) -> None:
    old, new = edit
    assert old in EXAMPLE, f"test edit for {name} no longer applies to the example"
    err = _error(EXAMPLE.replace(old, new, 1))
    rendered = str(err)
    assert any(p.path == path for p in err.problems), rendered
    assert words in rendered
    # Every problem names the file and a line.
    assert all(line.startswith("fleet.yaml:") for line in rendered.splitlines()), rendered
    assert all(p.line is not None for p in err.problems)


def test_the_lab_audits_ddl_and_role_changes_with_pgaudit() -> None:
    pg = load_fleet(REPO / "fleet.example.yaml").cluster("pg-main")
    assert isinstance(pg, PostgresCluster) and pg.audit is not None
    assert pg.audit.log == ["ddl", "role"] and not pg.audit.log_parameter


def test_pgaudit_takes_its_classes_and_subtractions() -> None:
    fleet = parse_fleet(EXAMPLE.replace("audit: {log: [ddl, role]}", "audit: {log: [all, -misc, -read]}"))
    pg = fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster) and pg.audit is not None and pg.audit.log == ["all", "-misc", "-read"]
    assert isinstance(fleet.cluster("pg-main"), PostgresCluster)
    without = parse_fleet(EXAMPLE.replace("    audit: {log: [ddl, role]}", "    "))
    assert without.clusters[0].audit is None  # type: ignore[union-attr]


def test_line_number_points_at_the_key() -> None:
    text = EXAMPLE.replace("    ha: manual\n", "    ha: manual\n    colour: blue\n")
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if "colour" in text_line)
    assert _error(text).problems[0].line == line


def test_not_yaml() -> None:
    err = _error("clusters: [\n  - {name: x\n")
    assert "not valid YAML" in str(err) and err.problems[0].line is not None


def test_not_a_mapping() -> None:
    assert "expected a mapping" in str(_error("- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_fleet(tmp_path / "nope.yaml")
    assert str(info.value).startswith(str(tmp_path / "nope.yaml")) and "no such file" in str(info.value)


def test_spec_models_are_frozen() -> None:
    fleet = parse_fleet(EXAMPLE)
    with pytest.raises(ValidationError):
        fleet.clusters[0].replicas = 7  # type: ignore[misc]
