"""How the device runner reaches a device: a local subprocess, SSH, or adb.

Every transport makes a scratch directory on the device, copies files into it, runs commands there
under a timeout, and removes it (and any process still running from it) when closed, also after a
failure. Nothing a user passes reaches a remote shell unquoted (``shlex.quote``).

SSH honours the user's ssh config and known_hosts and never accepts an unknown host key
(``StrictHostKeyChecking=yes``, ``BatchMode=yes``: key authentication, no prompts).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_mobilenet.errors import EdgeError


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


class Transport:
    """Base: subclasses implement _shell (argv running a shell command on the device) and push."""

    name = "transport"
    remote_timeout = True  # wrap commands in coreutils `timeout` on the device

    def __init__(self, python: str = "python3"):
        self.python = python
        self.scratch: str | None = None

    def open(self) -> str:
        result = self.shell("mktemp -d " + shlex.quote(self.scratch_template()), timeout=60)
        if result.returncode != 0 or not result.stdout.strip():
            raise EdgeError(f"{self.describe()}: cannot create a scratch directory: "
                            f"{_last_line(result.stderr) or 'no output'}")
        self.scratch = result.stdout.strip().splitlines()[-1]
        return self.scratch

    def scratch_template(self) -> str:
        return "/tmp/edge-bench.XXXXXXXX"

    def remote(self, name: str) -> str:
        return f"{self.scratch}/{name}"

    def run_in_scratch(self, argv: list[str], timeout: float, keep_stdin_open: bool = False) -> CommandResult:
        command = " ".join(shlex.quote(a) for a in argv)
        if self.remote_timeout:
            command = f"exec timeout -k 5 {int(timeout)} {command}"
        return self.shell(f"cd {shlex.quote(self.scratch)} && {command}", timeout=timeout + 30,
                          keep_stdin_open=keep_stdin_open)

    def shell(self, command: str, timeout: float, keep_stdin_open: bool = False) -> CommandResult:
        argv = self._shell(command)
        try:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            raise EdgeError(f"{argv[0]}: command not found on this machine") from None
        try:
            if keep_stdin_open:
                stdout, stderr = _wait_open_stdin(process, timeout)
            else:
                stdout, stderr = process.communicate(input="", timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                stdout, stderr = process.communicate(timeout=10)
            except (ValueError, OSError, subprocess.TimeoutExpired):
                stdout, stderr = "", ""
            return CommandResult(-9, stdout or "", stderr or "", timed_out=True)
        return CommandResult(process.returncode, stdout, stderr)

    def close(self) -> None:
        """Kill anything still running from the scratch directory, then remove it."""
        if self.scratch is None:
            return
        scratch, self.scratch = self.scratch, None
        # "[/]tmp/..." matches the runner's command line but not this shell's own
        pattern = shlex.quote(f"[{scratch[0]}]{scratch[1:]}")
        self.shell(f"pkill -f {pattern} 2>/dev/null; true", timeout=60)
        self.shell(f"rm -rf {shlex.quote(scratch)}", timeout=60)

    def _shell(self, command: str) -> list[str]:
        raise NotImplementedError

    def push(self, local: Path, name: str) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _wait_open_stdin(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait while keeping stdin open: the device runner exits by itself when it sees stdin close,
    that is when the connection drops (``--exit-on-stdin-eof``)."""
    import threading

    chunks = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda: chunks["out"].append(process.stdout.read()), daemon=True),
               threading.Thread(target=lambda: chunks["err"].append(process.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass
    for reader in readers:
        reader.join(timeout=10)
    return "".join(chunks["out"]), "".join(chunks["err"])


def _last_line(text: str) -> str:
    """The last non-empty line (where ssh, adb and shells put the error), at most 300 characters."""
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return lines[-1].strip()[:300] if lines else ""


class LocalTransport(Transport):
    name = "local"
    remote_timeout = False

    def __init__(self, python: str | None = None):
        super().__init__(python or sys.executable)

    def open(self) -> str:
        self.scratch = tempfile.mkdtemp(prefix="edge-bench.")
        return self.scratch

    def _shell(self, command: str) -> list[str]:
        return ["/bin/sh", "-c", command]

    def push(self, local: Path, name: str) -> str:
        shutil.copyfile(local, self.remote(name))
        return self.remote(name)

    def close(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    ssh_config: str | None = None
    connect_timeout_s: int = 15


class SshTransport(Transport):
    name = "ssh"

    def __init__(self, target: SshTarget, python: str = "python3"):
        super().__init__(python)
        self.target = target

    def options(self) -> list[str]:
        t = self.target
        options = []
        if t.ssh_config:
            options += ["-F", t.ssh_config]
        if t.port:
            options += ["-p", str(t.port)]
        if t.user:
            options += ["-l", t.user]
        if t.identity:
            options += ["-i", t.identity]
        return options + ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                          "-o", f"ConnectTimeout={t.connect_timeout_s}", "-o", "ServerAliveInterval=5",
                          "-o", "ServerAliveCountMax=3"]

    def _shell(self, command: str) -> list[str]:
        return ["ssh", *self.options(), "--", self.target.host, command]

    def shell(self, command: str, timeout: float, keep_stdin_open: bool = False) -> CommandResult:
        result = super().shell(command, timeout, keep_stdin_open)
        if result.returncode == 255:
            raise EdgeError(f"{self.describe()}: {_ssh_problem(result.stderr)}")
        return result

    def push(self, local: Path, name: str) -> str:
        remote = self.remote(name)
        with open(local, "rb") as handle:
            result = subprocess.run(self._shell(f"cat > {shlex.quote(remote)}"), stdin=handle,
                                    capture_output=True, timeout=600)
        if result.returncode != 0:
            raise EdgeError(f"{self.describe()}: copying {local} failed: "
                            f"{_last_line(result.stderr.decode(errors='replace'))}")
        return remote

    def describe(self) -> str:
        user = f"{self.target.user}@" if self.target.user else ""
        port = f":{self.target.port}" if self.target.port else ""
        return f"ssh {user}{self.target.host}{port}"


def _ssh_problem(stderr: str) -> str:
    text = stderr or ""
    if "Host key verification failed" in text or "No ED25519 host key is known" in text \
            or "host key for" in text.lower():
        return ("host key unknown or changed: refusing to connect (verify the device's key, then add it "
                "to known_hosts, e.g. `ssh-keyscan HOST >> ~/.ssh/known_hosts` after checking it)")
    if "Permission denied" in text:
        return "permission denied: key authentication failed (give --identity or set up ssh keys)"
    if "Connection refused" in text:
        return "connection refused (is sshd running and the port right?)"
    if "Could not resolve hostname" in text:
        return f"cannot resolve the host name ({_last_line(text)})"
    if "timed out" in text.lower():
        return "connection timed out"
    return f"ssh failed: {_last_line(text) or 'connection closed'}"


@dataclass(frozen=True)
class AdbTarget:
    serial: str | None = None
    adb: str = "adb"


class AdbTransport(Transport):
    name = "adb"

    def __init__(self, target: AdbTarget, python: str = "python3"):
        super().__init__(python)
        self.target = target

    def base(self) -> list[str]:
        return [self.target.adb] + (["-s", self.target.serial] if self.target.serial else [])

    def scratch_template(self) -> str:
        return "/data/local/tmp/edge-bench.XXXXXXXX"

    def _shell(self, command: str) -> list[str]:
        return [*self.base(), "shell", command]

    def shell(self, command: str, timeout: float, keep_stdin_open: bool = False) -> CommandResult:
        result = super().shell(command, timeout, keep_stdin_open)
        if result.returncode != 0 and ("device '" in result.stderr and "not found" in result.stderr
                                       or "no devices/emulators found" in result.stderr
                                       or "device offline" in result.stderr):
            raise EdgeError(f"{self.describe()}: {_last_line(result.stderr)}")
        return result

    def push(self, local: Path, name: str) -> str:
        remote = self.remote(name)
        result = subprocess.run([*self.base(), "push", str(local), remote], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            raise EdgeError(f"{self.describe()}: adb push {local} failed: {_last_line(result.stderr)}")
        return remote

    def has_python(self) -> bool:
        result = self.shell(f"command -v {shlex.quote(self.python)}", timeout=30)
        return result.returncode == 0 and bool(result.stdout.strip())

    def describe(self) -> str:
        return f"adb {self.target.serial or '(default device)'}"
