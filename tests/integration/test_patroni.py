"""ha: patroni in the lab after the converge: etcd with TLS and authentication, Patroni's REST API, the endpoints.

Each check talks to the lab's own containers: etcd's JSON gateway and
Patroni's API over TLS with the fleet CA the pki role made, HAProxy's ports
with psycopg, and `dbfleet connect` for the DSN.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from dbfleet.cli import main
from dbfleet.spec import PostgresCluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def ha(configured: Any) -> tuple[Any, PostgresCluster, ssl.SSLContext]:
    if not configured.has("postgres"):
        pytest.skip("the lab runs no PostgreSQL hosts")
    cluster = configured.fleet.of_engine("postgres")[0]
    if cluster.ha != "patroni":
        pytest.skip("the lab's PostgreSQL cluster is not ha: patroni")
    context = ssl.create_default_context(cafile=str(configured.inventory_path.parent / "pki" / "ca.crt"))
    return configured, cluster, context


def call(context: ssl.SSLContext, url: str, body: dict[str, Any] | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, raw.decode()


def etcd(lab: Any, cluster: PostgresCluster, context: ssl.SSLContext, host: str, path: str, body: dict[str, Any],
         token: str | None = None) -> tuple[int, Any]:
    url = f"https://{lab.address(host)}:{cluster.patroni.etcd.client_port}/v3/{path}"
    return call(context, url, body, headers={"Authorization": token} if token else None)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_etcd_members_form_one_cluster_over_tls(ha: tuple[Any, PostgresCluster, ssl.SSLContext]) -> None:
    lab, cluster, context = ha
    members = [h.name for h in cluster.etcd_hosts()]
    for host in members:
        status, health = call(context, f"https://{lab.address(host)}:{cluster.patroni.etcd.client_port}/health")
        assert status == 200 and health == {"health": "true"}, (host, health)
        config = lab.host(host).file("/etc/default/etcd").content_string
        assert config.count("https://") >= 5 and "http://" not in config, host
        assert 'ETCD_PEER_CLIENT_CERT_AUTH="true"' in config
    status, listed = etcd(lab, cluster, context, members[0], "cluster/member/list", {})
    assert status == 200 and sorted(m["name"] for m in listed["members"]) == sorted(members)
    assert all(url.startswith("https://") for m in listed["members"] for url in m["peerURLs"])
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):  # TLS only
        urllib.request.urlopen(f"http://{lab.address(members[0])}:{cluster.patroni.etcd.client_port}/health",
                               timeout=5)


def test_etcd_refuses_anonymous_reads_and_fences_patroni_into_its_namespace(
        ha: tuple[Any, PostgresCluster, ssl.SSLContext]) -> None:
    lab, cluster, context = ha
    host = cluster.etcd_hosts()[0].name
    prefix = "/dbfleet/"
    everything = {"key": b64(prefix), "range_end": b64("/dbfleet0")}
    status, anonymous = etcd(lab, cluster, context, host, "kv/range", everything)
    assert status != 200, f"an unauthenticated read was answered: {anonymous}"
    status, auth = etcd(lab, cluster, context, host, "auth/authenticate",
                        {"name": "patroni", "password": lab.secrets["etcd_patroni_password"]})
    assert status == 200 and auth.get("token"), auth
    token = auth["token"]
    status, mine = etcd(lab, cluster, context, host, "kv/range",
                        {"key": b64(f"{prefix}{cluster.name}/leader")}, token)
    assert status == 200 and int(mine.get("count", 0)) == 1, mine
    status, other = etcd(lab, cluster, context, host, "kv/put", {"key": b64("/elsewhere"), "value": b64("x")}, token)
    assert status != 200 and "permission denied" in json.dumps(other), other
    status, wrong = etcd(lab, cluster, context, host, "auth/authenticate", {"name": "patroni", "password": "nope"})
    assert status != 200, wrong


def test_patroni_api_reads_openly_and_writes_only_with_credentials(
        ha: tuple[Any, PostgresCluster, ssl.SSLContext]) -> None:
    lab, cluster, context = ha
    host = cluster.host_names()[0]
    base = f"https://{lab.address(host)}:{cluster.patroni.rest_api_port}"
    status, state = call(context, f"{base}/cluster")
    assert status == 200 and {m["name"] for m in state["members"]} == set(cluster.host_names())
    leaders = [m for m in state["members"] if m["role"] == "leader"]
    assert len(leaders) == 1 and leaders[0]["state"] == "running"
    syncs = [m for m in state["members"] if m["role"] == "sync_standby"]
    assert len(syncs) == cluster.synchronous.num_sync
    status, config = call(context, f"{base}/config")
    assert status == 200 and config["ttl"] == cluster.patroni.ttl
    assert config["synchronous_mode"] is cluster.synchronous.enabled
    assert config["postgresql"]["parameters"]["max_connections"] == cluster.parameters["max_connections"]
    status, refused = call(context, f"{base}/config", {"ttl": 99}, method="PATCH")
    assert status == 401, refused
    status, refused = call(context, f"{base}/restart", {}, method="POST")
    assert status == 401, refused
    wrong = "Basic " + base64.b64encode(b"patroni:not-the-password").decode()
    status, refused = call(context, f"{base}/restart", {}, method="POST", headers={"Authorization": wrong})
    assert status == 401, refused
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):  # TLS only
        urllib.request.urlopen(f"http://{lab.address(host)}:{cluster.patroni.rest_api_port}/cluster", timeout=5)


def dsn_of(lab: Any, cluster: PostgresCluster, *extra: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--spec", "fleet.example.yaml", "connect", "--cluster", cluster.name, "--user", "postgres",
                     "--inventory", str(lab.inventory_path), *extra])
    assert code == 0
    return out.getvalue().strip()


def test_the_endpoints_reach_the_primary_and_the_replicas(ha: tuple[Any, PostgresCluster, ssl.SSLContext]) -> None:
    lab, cluster, context = ha
    password = lab.secrets["postgres_superuser_password"]
    rw, ro = dsn_of(lab, cluster), dsn_of(lab, cluster, "--ro")
    assert password not in rw and "password" not in rw
    assert f":{cluster.endpoints.rw_port}" in rw and f":{cluster.endpoints.ro_port}" in ro
    status, state = call(context, f"https://{lab.address(cluster.host_names()[0])}:{cluster.patroni.rest_api_port}"
                                  "/cluster")
    leader = next(m["name"] for m in state["members"] if m["role"] == "leader")
    with psycopg.connect(rw, password=password, autocommit=True) as conn:
        recovery, server = conn.execute("select pg_is_in_recovery(), host(inet_server_addr())").fetchone()
        assert recovery is False and server == lab.address(leader)
    seen = set()
    for _ in range(4):
        with psycopg.connect(ro, password=password, autocommit=True) as conn:
            recovery, server = conn.execute("select pg_is_in_recovery(), host(inet_server_addr())").fetchone()
            assert recovery is True and server != lab.address(leader)
            seen.add(server)
    assert len(seen) == min(cluster.replicas, 2), f"the read-only port balanced over {seen}"
    # Every HAProxy host forwards to the same primary, with the server's certificate valid for the endpoint.
    ca = lab.inventory_path.parent / "pki" / "ca.crt"
    for proxy in cluster.endpoint_hosts():
        with psycopg.connect(host=lab.address(proxy.name), port=cluster.endpoints.rw_port, dbname="postgres",
                             user="postgres", password=password, sslmode="verify-full", sslrootcert=str(ca),
                             connect_timeout=5) as conn:
            assert conn.execute("select host(inet_server_addr())").fetchone()[0] == lab.address(leader)
