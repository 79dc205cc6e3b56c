"""Real servers for the registry tests: dnsmasq on loopback, `nsm-registry serve` processes, and
in-process registries over unix sockets. Everything started here is stopped by its context."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from nsmgr.registry.client import CallError, RegistryClient
from nsmgr.registry.proxy import Proxy
from nsmgr.registry.resolver import Resolver
from nsmgr.registry.server import Registry, add_to_server
from nsmgr.registry.store import Backend, SqliteBackend

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
needs_dnsmasq = pytest.mark.skipif(
    not os.access(DNSMASQ, os.X_OK), reason="needs dnsmasq (Debian package dnsmasq-base)"
)
NSM_REGISTRY = [sys.executable, "-m", "nsmgr.registry.cli"]
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (dnsmasq takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A temp dir short enough for unix socket paths (≤ 107 bytes)."""
    d = tempfile.mkdtemp(prefix="nsr")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- dnsmasq --------------------------------------------------------------------------------------


@dataclass
class Dnsmasq:
    port: int
    proc: subprocess.Popen[bytes]
    log: str

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self) -> list[str]:
        """The questions dnsmasq was asked (its log), but for our readiness probe."""
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return [line for line in f if "query[" in line and " probe.test " not in line]


@contextlib.contextmanager
def dnsmasq(records: Sequence[str], workdir: str, *, ttl: int = 300) -> Iterator[Dnsmasq]:
    """dnsmasq on 127.0.0.1:<free port> answering `records` (dnsmasq options such as
    `srv-host=...`, `host-record=...`) and NXDOMAIN for anything else under .test; no upstream."""
    log = os.path.join(workdir, f"dnsmasq-{len(os.listdir(workdir))}.log")
    for _ in range(5):
        port = free_port()
        cmd = [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            "--local=/test/",
            f"--local-ttl={ttl}",
            "--log-queries",
            f"--log-facility={log}",
            *(f"--{r}" for r in records),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_dns(proc, port)
        except _PortTaken:
            continue
        except BaseException:
            _stop(proc)
            raise
        try:
            yield Dnsmasq(port, proc, log)
        finally:
            _stop(proc)
        return
    raise RuntimeError("dnsmasq: no free port after 5 tries")


class _PortTaken(Exception):
    pass


def _wait_dns(proc: subprocess.Popen[bytes], port: int) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            if "Address already in use" in err:
                raise _PortTaken(err)
            raise RuntimeError(f"dnsmasq exited {proc.returncode}: {err.strip()}")
        try:
            dns.query.udp(dns.message.make_query("probe.test.", "A"), "127.0.0.1", 0.2, port)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("dnsmasq did not answer within 5 s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


# -- registry processes ---------------------------------------------------------------------------


def write_config(path: str, domain: str, workdir: str, **blocks: str) -> str:
    """A config file: `domain`, a SQLite store in `workdir`, and YAML flow blocks by name."""
    lines = [f"domain: {domain}", f"store: {{path: {workdir}/{domain}.db}}"]
    if "store" in blocks:
        lines.pop()
    lines += [f"{k}: {v}" for k, v in blocks.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class RegistryProcess:
    address: str
    proc: subprocess.Popen[bytes]
    log: str

    def output(self) -> str:
        return Path(self.log).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        _stop(self.proc, 10.0)
        return int(self.proc.returncode)


def wait_serving(address: str, proc: subprocess.Popen[bytes] | None, log: str = "") -> None:
    deadline = time.monotonic() + 15
    with RegistryClient(address, timeout=0.5) as reg:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                text = Path(log).read_text(errors="replace") if log else ""
                raise RuntimeError(f"nsm-registry exited {proc.returncode}: {text[-2000:]}")
            try:
                reg.find_services()
                return
            except CallError:
                time.sleep(0.05)
    raise RuntimeError(f"no registry at {address} within 15 s")


@contextlib.contextmanager
def registry_process(
    config: str, address: str, *extra: str, log: str | None = None
) -> Iterator[RegistryProcess]:
    """`nsm-registry serve --config config --listen address`, stopped (SIGTERM) at the end."""
    log = log or config + ".log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*NSM_REGISTRY, "serve", "--config", config, "--listen", address, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    rp = RegistryProcess(address, proc, log)
    try:
        wait_serving(address, proc, log)
        yield rp
    finally:
        rp.stop()


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NSM_REGISTRY, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# -- in-process registries ------------------------------------------------------------------------


@dataclass
class Served:
    registry: Registry
    address: str  # unix:///...
    server: grpc.Server
    tcp_port: int = 0  # with tcp=True: also on 127.0.0.1:tcp_port


@contextlib.contextmanager
def served(
    sock_dir: str,
    *,
    domain: str = "local.test",
    backend: Backend | None = None,
    resolver: Resolver | None = None,
    pnsmgr_url: str = "",
    default_ttl: float = 60.0,
    max_ttl: float = 600.0,
    name: str = "reg",
    tcp: bool = False,
) -> Iterator[Served]:
    """A Registry with its sweeper, served over a unix socket in `sock_dir`."""
    backend = backend or SqliteBackend(":memory:")
    proxy = Proxy(resolver, pnsmgr_url=pnsmgr_url) if resolver is not None else None
    reg = Registry(backend, domain=domain, default_ttl=default_ttl, max_ttl=max_ttl, proxy=proxy)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add_to_server(reg, server)
    address = f"unix://{sock_dir}/{name}.sock"
    server.add_insecure_port(address)
    tcp_port = server.add_insecure_port("127.0.0.1:0") if tcp else 0
    server.start()
    reg.start()
    try:
        yield Served(reg, address, server, tcp_port)
    finally:
        reg.stop()
        server.stop(1).wait(2)
        if proxy is not None:
            proxy.close()
        backend.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.removeprefix("unix://"))


def terminate_on_exit(proc: subprocess.Popen[bytes]) -> None:
    """Last resort for a process a failing test left behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
