"""Alert rules generated from the spec: schedule gaps, thresholds, the committed file, promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dbfleet.cli import main
from dbfleet.monitoring import rules
from dbfleet.spec import load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "monitoring" / "rules" / "fleet.rules.yml"
RULE_TESTS = sorted((REPO / "monitoring" / "rules" / "tests").glob("*.test.yml"))


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: scripts/bootstrap.sh installs Debian's prometheus package for it")
    return path


def _alerts(group: dict) -> dict[str, dict]:
    return {r["alert"]: r for r in group["rules"] if "alert" in r}


SMALL_FLEET = """
apiVersion: dbfleet/v1
fleet: {name: small}
clusters:
  - name: pg-a
    engine: postgres
    hosts: [a-1, a-2]
    replicas: 1
    backup: {schedule: {full: "0 3 * * *"}}
    monitoring:
      scrape_interval: 2m
      alerts: {replica_lag_seconds: 12, replica_lag_bytes: 1000, replica_down_for: 45s, cache_hit_ratio_min: 0.75,
               disk_used_percent_max: 66, connections_used_percent_max: 55}
  - name: pg-solo
    engine: postgres
    hosts: [b-1]
    replicas: 0
    backup: {enabled: false}
  - name: quiet
    engine: redis
    hosts: [r-1]
    replicas: 0
    min_replicas_to_write: 0
    sentinels: [s-1]
    monitoring: {enabled: false}
"""


@pytest.mark.parametrize(("schedules", "gap"), [
    (["0 * * * *"], 3600),
    (["*/15 * * * *"], 900),
    (["0 2 * * *"], 86400),
    (["0 2 * * 0"], 7 * 86400),
    (["0 2 * * 0", "0 2 * * 1-6"], 86400),          # weekly full plus daily diff: a backup every day
    (["0 2 * * 0", "0 2 * * 1-6", "0 * * * *"], 3600),
    (["30 1 * * 1-5"], 3 * 86400),                   # weekdays only: Friday to Monday
    (["0 0 1 * *"], 31 * 86400),
    (["0 6,18 * * *"], 12 * 3600),
])
def test_max_gap_between_scheduled_runs(schedules: list[str], gap: int) -> None:
    assert rules.max_gap_seconds(schedules) == gap


def test_backup_allowed_age_adds_grace() -> None:
    assert rules.backup_allowed_age_seconds(["0 * * * *"]) == 2 * 3600          # at least an hour of grace
    assert rules.backup_allowed_age_seconds(["0 2 * * *"]) == 36 * 3600         # half the gap


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (90, "90s"), (120, "2m"), (7200, "2h"), (86400, "1d")])
def test_prom_duration(seconds: int, text: str) -> None:
    assert rules.prom_duration(seconds) == text


def test_thresholds_come_from_each_clusters_spec() -> None:
    data = rules.fleet_rules(parse_fleet(SMALL_FLEET))
    groups = {g["name"]: g for g in data["groups"]}
    assert set(groups) == {"dbfleet-fleet", "dbfleet-pg-a", "dbfleet-pg-solo"}   # monitoring disabled: no group
    a = _alerts(groups["dbfleet-pg-a"])
    assert groups["dbfleet-pg-a"]["interval"] == "2m"
    assert a["PostgresReplicaDown"]["expr"].endswith("< 1") and a["PostgresReplicaDown"]["for"] == "45s"
    assert "> 12\n" in a["PostgresReplicaLag"]["expr"] and "> 1000" in a["PostgresReplicaLag"]["expr"]
    assert a["PostgresCacheHitRatioLow"]["expr"].endswith("< 0.75")
    assert a["DataDiskUsageHigh"]["expr"].endswith("> 66")
    assert a["PostgresConnectionsHigh"]["expr"].endswith("> 55")
    assert a["BackupTooOld"]["expr"].endswith(f"> {36 * 3600}")
    assert all(r["labels"]["cluster"] == "pg-a" for r in a.values())
    assert all('cluster="pg-a"' in r["expr"] for r in a.values())
    # a 2m scrape interval widens the rate window to four scrapes
    ratio = next(r for r in groups["dbfleet-pg-a"]["rules"] if r.get("record") == "dbfleet:pg_cache_hit_ratio:rate")
    assert "[8m]" in ratio["expr"]
    solo = _alerts(groups["dbfleet-pg-solo"])
    assert "PostgresReplicaDown" not in solo and "PostgresReplicaLag" not in solo   # no replicas to lose
    assert "BackupTooOld" not in solo and "RestoreDrillFailed" not in solo          # backups disabled
    fleet_alerts = _alerts(groups["dbfleet-fleet"])
    assert fleet_alerts["TargetDown"]["for"] == "45s"          # the shortest replica_down_for of the fleet
    assert fleet_alerts["DataDiskUsageHigh"]["expr"].endswith("> 66")


def test_every_engine_gets_the_issue_alerts() -> None:
    groups = {g["name"]: _alerts(g) for g in rules.fleet_rules(load_fleet(REPO / "fleet.example.yaml"))["groups"]}
    assert {"PostgresReplicaLag", "PostgresReplicaDown", "BackupTooOld", "RestoreDrillFailed",
            "PostgresCacheHitRatioLow", "DataDiskUsageHigh",
            "PostgresConnectionsHigh"} <= set(groups["dbfleet-pg-main"])
    assert {"SentinelNoQuorum", "RedisReplicaDown", "RedisReplicaLag", "RedisMemoryHigh",
            "RedisCacheHitRatioLow", "RedisConnectionsHigh"} <= set(groups["dbfleet-cache"])
    assert {"MongoShardNoPrimary", "MongoReplicaLag", "MongoReplicaDown"} <= set(groups["dbfleet-mongo-main"])


def test_committed_rules_file_matches_the_spec() -> None:
    assert RULES_FILE.read_text() == rules.render_rules(load_fleet(REPO / "fleet.example.yaml")), (
        "monitoring/rules/fleet.rules.yml is stale: run `python -m dbfleet rules --write`")
    assert yaml.safe_load(RULES_FILE.read_text())["groups"]


def test_rules_command_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.yml"
    spec = str(REPO / "fleet.example.yaml")
    assert main(["--spec", spec, "rules", "--check", "--output", str(out)]) == 1       # missing
    assert main(["--spec", spec, "rules", "--write", "--output", str(out)]) == 0
    assert main(["--spec", spec, "rules", "--check", "--output", str(out)]) == 0
    assert main(["--spec", spec, "rules", "--write", "--output", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out
    out.write_text(out.read_text().replace("> 80", "> 81"))
    assert main(["--spec", spec, "rules", "--check", "--output", str(out)]) == 1       # stale
    assert "stale" in capsys.readouterr().err
    assert main(["--spec", spec, "rules"]) == 0
    assert capsys.readouterr().out == RULES_FILE.read_text()


def test_promtool_accepts_the_rules_file() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests under monitoring/rules/tests"
    result = subprocess.run([_promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_rules_pass_promtool_for_another_spec(tmp_path: Path) -> None:
    path = tmp_path / "small.rules.yml"
    path.write_text(rules.render_rules(parse_fleet(SMALL_FLEET)))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
