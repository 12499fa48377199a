"""Where the TensorRT jobs run: a Jetson reached over ssh, or this machine's own GPU.

Both run the same POSIX shell scripts (qatstudy.trt) with the same tar streams on stdin and stdout, so the
device needs nothing beyond JetPack: a shell, tar, trtexec, and for the device record nvpmodel and tegrastats.
Which host is read from the environment when a job runs, never from rule params, so pointing the workflow at
another device reruns nothing.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import time
from dataclasses import dataclass

HOST_ENV = "QATSTUDY_JETSON_HOST"  # an ssh destination: an alias from ~/.ssh/config, or user@address
SSH_CONFIG_ENV = "QATSTUDY_SSH_CONFIG"  # an ssh config file to use instead of ~/.ssh/config
ATTEMPTS_ENV = "QATSTUDY_SSH_ATTEMPTS"
TRTEXEC_ENV = "QATSTUDY_TRTEXEC"  # trtexec on the device, if neither on its PATH nor in /usr/src/tensorrt/bin
DEFAULT_HOST = "jetson"
SSH_FAILED = 255  # ssh's exit status when the connection, not the remote command, failed


class DeviceUnreachable(RuntimeError):
    """The device could not be reached: every ssh attempt failed before or while running the command."""


@dataclass(frozen=True)
class Transport:
    kind: str  # "ssh" or "local"
    host: str | None = None
    ssh_config: str | None = None
    attempts: int = 3
    retry_wait_s: float = 5.0
    connect_timeout_s: int = 15

    @classmethod
    def from_environment(cls, kind: str, environ=os.environ) -> Transport:
        if kind == "local":
            return cls("local")
        if kind != "ssh":
            raise ValueError(f"trt.transport must be ssh or local, not {kind!r}")
        attempts = int(environ.get(ATTEMPTS_ENV, "3"))
        if attempts < 1:
            raise ValueError(f"{ATTEMPTS_ENV} must be at least 1")
        return cls("ssh", environ.get(HOST_ENV) or DEFAULT_HOST, environ.get(SSH_CONFIG_ENV) or None, attempts)

    def describe(self) -> str:
        return f"ssh host {self.host!r}" if self.kind == "ssh" else "this machine"

    def argv(self, script: str) -> list[str]:
        if self.kind == "local":
            return ["sh", "-c", script]
        config = ["-F", self.ssh_config] if self.ssh_config else []
        # BatchMode: fail instead of asking for a password; ServerAlive: notice a device that went away
        return [
            "ssh",
            *config,
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout_s}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            self.host,
            "sh -c " + shlex.quote(script),
        ]

    def run(self, script: str, stdin: bytes = b"", log=print) -> subprocess.CompletedProcess:
        """Run `script` on the device; over ssh, retry while ssh itself fails (exit 255: refused, timed out,
        dropped), which the scripts never return themselves."""
        for attempt in range(1, self.attempts + 1):
            result = subprocess.run(self.argv(script), input=stdin, capture_output=True)
            if self.kind == "local" or result.returncode != SSH_FAILED:
                return result
            reason = result.stderr.decode(errors="replace").strip() or "no message from ssh"
            log(f"ssh to {self.host!r} failed (attempt {attempt} of {self.attempts}): {reason}")
            if attempt < self.attempts:
                time.sleep(self.retry_wait_s * attempt)
        raise DeviceUnreachable(
            f"could not reach the TensorRT device over ssh (host {self.host!r}) in {self.attempts} attempt(s): "
            f"{reason}\nCheck that `ssh {self.host} true` works without a password prompt; the host is the ssh "
            f"alias 'jetson' from ~/.ssh/config unless {HOST_ENV} names another."
        )

    def trtexec(self, environ=os.environ) -> str:
        return environ.get(TRTEXEC_ENV) or "trtexec"


def pack(files: dict[str, bytes]) -> bytes:
    """A tar stream of in-memory files, for a script's stdin."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(stream: bytes) -> dict[str, bytes]:
    """The regular files of a script's tar stream on stdout, by base name; nothing is written to disk."""
    if not stream:
        return {}
    files = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                files[os.path.basename(member.name)] = tar.extractfile(member).read()
    return files
