"""Run a command on a fleet host: `docker exec` for lab containers, ssh for EC2, chosen from the inventory.

The operator runs on its own machine and drives tools that live on the database
hosts (pgBackRest, pg_amcheck, mongodump). An InventoryExecutor (built by
FleetAccess from the inventory) reads each host's `ansible_connection` and
routes every call the way Ansible would: `docker` (`community.docker.docker`) hosts through the Docker API,
any other through the ssh client. Secrets travel in `env`, never in argv, so
they do not show up in a process list or a log line.
"""

from __future__ import annotations

import base64
import io
import logging
import shlex
import subprocess
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbfleet.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

DOCKER_CONNECTIONS = frozenset({"docker", "community.docker.docker"})
"""Ansible routes the short name to the collection's plugin; Mitogen takes over only the short name."""


@dataclass(frozen=True)
class ExecResult:
    """What one command gave: exit code, stdout and stderr as text, and how long it ran."""

    rc: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, lines: int = 20) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for error messages."""
        text = self.err.strip() or self.out.strip()
        return "\n".join(text.splitlines()[-lines:])


class CommandFailed(PermanentError):
    """A command on a host exited non-zero; carries its result."""

    def __init__(self, message: str, *, result: ExecResult | None = None, host: str = "", action: str = "",
                 cluster: str = ""):
        self.result = result
        super().__init__(message, cluster=cluster, host=host, action=action)

    def located(self, *, cluster: str = "", host: str = "", action: str = "") -> CommandFailed:
        return CommandFailed(self.message, result=self.result, cluster=self.cluster or cluster,
                             host=self.host or host, action=self.action or action)


def as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    """argv run as `user` (runuser keeps the caller's environment off; -u needs no shell)."""
    return list(argv) if user in (None, "root") else ["runuser", "-u", str(user), "--", *argv]


class Executor(ABC):
    """Runs argv on a named host."""

    @abstractmethod
    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        """Run argv on host and return its result; raise TemporaryError when the host cannot be reached."""

    @abstractmethod
    def fetch(self, host: str, remote: str, local: Path) -> None:
        """Copy one file from host to a local path."""

    def check(self, host: str, argv: Sequence[str], *, user: str | None = None,
              env: Mapping[str, str] | None = None, timeout: float | None = 3600, action: str = "") -> ExecResult:
        """run(), raising CommandFailed (with stderr's tail) when the command exits non-zero."""
        result = self.run(host, argv, user=user, env=env, timeout=timeout)
        if not result.ok:
            raise CommandFailed(f"`{shlex.join(argv)[:200]}` exited {result.rc}: {result.tail()}",
                                result=result, host=host, action=action or argv[0])
        return result


    def write_text(self, host: str, path: str, text: str, *, mode: str = "0600", owner: str | None = None,
                   exclusive: bool = False) -> None:
        """Write a small file on host; its content travels in the environment, not argv. `exclusive`: a new file
        only (the shell's noclobber, `set -C`): a file or a link already at the path fails the write, and nothing
        is written through it (credential files)."""
        script = 'umask 077; ' + ('set -C; ' if exclusive else '') + \
            'printf "%s" "$DBFLEET_CONTENT" > "$1" && chmod "$2" "$1"'
        if owner:
            script += ' && chown "$3" "$1"'
        self.check(host, ["sh", "-c", script, "write", path, mode, owner or ""], env={"DBFLEET_CONTENT": text},
                   action=f"write {path}")


class DockerExecutor(Executor):
    """`docker exec` through the Docker SDK; `containers` maps host name to container name."""

    def __init__(self, containers: Mapping[str, str], client: Any = None):
        import docker

        self.containers = dict(containers)
        self.client = client or docker.from_env()

    def _container(self, host: str) -> Any:
        from docker.errors import NotFound

        name = self.containers.get(host, host)
        try:
            container = self.client.containers.get(name)
        except NotFound:
            raise TemporaryError(f"container {name} does not exist", host=host) from None
        if container.status != "running":
            raise TemporaryError(f"container {name} is {container.status}", host=host)
        return container

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        container = self._container(host)
        command = list(argv)
        if timeout is not None:
            command = ["timeout", "--kill-after=10", str(int(timeout)), *command]
        start = time.monotonic()
        # The user switch happens inside the container so HOME and the environment match `runuser`.
        code, (out, err) = container.exec_run(as_user(user, command), environment=dict(env or {}), demux=True)
        return ExecResult(code if code is not None else -1, (out or b"").decode(errors="replace"),
                          (err or b"").decode(errors="replace"), time.monotonic() - start)

    def fetch(self, host: str, remote: str, local: Path) -> None:
        stream, _ = self._container(host).get_archive(remote)
        buffer = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=buffer) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise CommandFailed(f"{remote} is not a regular file", host=host, action="fetch")
            source = tar.extractfile(member)
            assert source is not None
            local.parent.mkdir(parents=True, exist_ok=True)
            with local.open("wb") as handle:
                while chunk := source.read(1 << 20):
                    handle.write(chunk)


class SshExecutor(Executor):
    """The ssh client, with the inventory's host, user, port and key. Env goes over stdin, not argv."""

    def __init__(self, hostvars: Mapping[str, Mapping[str, Any]], ssh: str = "ssh", scp: str = "scp"):
        self.hostvars = {h: dict(v) for h, v in hostvars.items()}
        self.ssh = ssh
        self.scp = scp

    def _options(self, host: str, port_flag: str) -> tuple[list[str], str]:
        vars_ = self.hostvars.get(host, {})
        target = str(vars_.get("ansible_host") or vars_.get("dbfleet_address") or host)
        user = vars_.get("ansible_user")
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if vars_.get("ansible_port"):
            opts += [port_flag, str(vars_["ansible_port"])]
        if vars_.get("ansible_ssh_private_key_file"):
            opts += ["-i", str(vars_["ansible_ssh_private_key_file"])]
        if vars_.get("ansible_ssh_common_args"):
            opts += shlex.split(str(vars_["ansible_ssh_common_args"]))
        return opts, f"{user}@{target}" if user else target

    def command(self, host: str, argv: Sequence[str], user: str | None, env: Mapping[str, str] | None) -> tuple[
            list[str], str]:
        """The ssh argv and the stdin text for one call (exposed for tests)."""
        opts, target = self._options(host, "-p")
        names = sorted(env or {})
        # The remote shell reads one value per line from stdin and exports it, then execs the command,
        # so secrets never appear on any command line.
        # Values are base64 on stdin, so a multi-line value (a config file) survives `read`.
        prelude = "".join(f'IFS= read -r {n}; {n}=$(printf %s "${n}" | base64 -d); export {n}; ' for n in names)
        # An EC2 login user is not root: like Ansible's become, sudo keeps the exported values (-E).
        login = self.hostvars.get(host, {}).get("ansible_user")
        sudo = "sudo -E " if login not in (None, "root") else ""
        remote = prelude + "exec " + sudo + shlex.join(as_user(user, argv))
        stdin = "".join(base64.b64encode((env or {})[n].encode()).decode() + "\n" for n in names)
        return [self.ssh, *opts, target, "sh -c " + shlex.quote(remote)], stdin

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        cmd, stdin = self.command(host, argv, user, env)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ExecResult(124, "", f"timed out after {timeout}s", time.monotonic() - start)
        if proc.returncode == 255:
            raise TemporaryError(f"ssh: {proc.stderr.strip()[-300:]}", host=host)
        return ExecResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def fetch(self, host: str, remote: str, local: Path) -> None:
        opts, target = self._options(host, "-P")
        local.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([self.scp, *opts, f"{target}:{remote}", str(local)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CommandFailed(f"scp {remote}: {proc.stderr.strip()[-300:]}", host=host, action="fetch")


class InventoryExecutor(Executor):
    """Routes each host to the docker or ssh executor its inventory entry asks for."""

    def __init__(self, hostvars: Mapping[str, Mapping[str, Any]], docker_client: Any = None):
        self.hostvars = {h: dict(v) for h, v in hostvars.items()}
        docker_hosts = {h: str(v.get("ansible_host", h)) for h, v in self.hostvars.items()
                        if v.get("ansible_connection") in DOCKER_CONNECTIONS}
        self._docker = DockerExecutor(docker_hosts, docker_client) if docker_hosts else None
        self._ssh = SshExecutor({h: v for h, v in self.hostvars.items() if h not in docker_hosts})

    def _for(self, host: str) -> Executor:
        if host not in self.hostvars:
            raise PermanentError(f"host {host} is not in the inventory", host=host)
        if self._docker is not None and host in self._docker.containers:
            return self._docker
        return self._ssh

    def run(self, host: str, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 3600) -> ExecResult:
        log.debug("%s: %s", host, shlex.join(argv)[:300])
        return self._for(host).run(host, argv, user=user, env=env, timeout=timeout)

    def fetch(self, host: str, remote: str, local: Path) -> None:
        self._for(host).fetch(host, remote, local)

