"""A real Linux "switch" for the `linux` driver: a network namespace with switch ports and
bridges, and an sshd inside it that a dedicated user logs in to with a key.

Layout (all made by the test, all gone at teardown, even when the test fails):
- switch netns: ports `swpN`, veth peers of `vf-swpN` in a second "node" netns (the VF
  stand-ins), the `br-v<vlan>` bridges the driver makes, and `mgmt0`.
- management: a veth pair host netns <-> switch netns with a random 169.254.x.y/30, so the test
  process (in the host netns) connects over plain TCP; sshd listens on the switch side only.
- login: a dedicated system user `tsw<hex>` with a bare home (just .ssh/authorized_keys, no
  dotfiles: a root shell here runs `pyenv init` on every command) and key-only login.
- privilege: the user's login shell is a private copy of `capsh` carrying the file capability
  cap_net_admin (+p), which raises it as an *ambient* capability and runs /bin/sh. The shell and
  every `ip` it runs hold CAP_NET_ADMIN and nothing else (`ip` keeps it because it is
  inheritable; with a plain file cap on `ip` it drops it). Network admin acts on the netns the
  process is in, and entering another netns needs CAP_SYS_ADMIN, so the user administers the
  switch netns only: no sudo, no uid 0. The capsh copy is 0750 root:<user's group>. (Limit:
  CAP_NET_ADMIN of the initial user namespace also lets the user push a link into a netns it
  can name by pid, e.g. `ip link set X netns 1`; acceptable for a test switch.)
- host key: generated per fixture; the client's known_hosts file holds exactly that key.
- sshd runs as `ip netns exec NS sh -c 'mount tmpfs /var/log && exec sshd -D -f OWN_CONFIG'`:
  the tmpfs (in the private mount namespace `ip netns exec` makes) keeps its wtmp/lastlog
  records from outliving the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab.sshd import sshd_config
from tests.conftest import ip
from torshim.drivers.base import SwitchParams

SSHD = "/usr/sbin/sshd"
CAPSH = shutil.which("capsh") or "/usr/sbin/capsh"

needs_linux_switch = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(os.path.exists(p) for p in (SSHD, CAPSH))
    or shutil.which("setcap") is None
    or shutil.which("useradd") is None,
    reason="needs root, openssh-server, libcap2-bin (capsh, setcap) and useradd",
)


@dataclass
class LinuxSwitch:
    """What a test needs to reach and inspect the switch."""

    name: str
    ns: str
    node_ns: str
    host: str
    port: int
    username: str
    key_file: str
    known_hosts: str
    ports: tuple[str, ...]
    workdir: str
    pids: list[int] = field(default_factory=list)

    def params(self, **overrides: Any) -> SwitchParams:
        values: dict[str, Any] = {
            "name": self.name,
            "driver": "linux",
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "connect_timeout": 5.0,
            "command_timeout": 10.0,
        }
        values.update(overrides)
        return SwitchParams(**values)

    def links(self) -> dict[str, dict[str, Any]]:
        """The switch netns' links as the kernel reports them (`ip -n NS -j link`)."""
        res = subprocess.run(
            ["ip", "-n", self.ns, "-j", "link", "show"], capture_output=True, text=True, check=True
        )
        return {link["ifname"]: link for link in json.loads(res.stdout)}

    def master(self, port: str) -> str | None:
        return self.links()[port].get("master")

    def bridge_members(self) -> dict[str, set[str]]:
        """{bridge: {ports}} for every bridge in the switch netns, members or not."""
        res = subprocess.run(
            ["ip", "-n", self.ns, "-j", "-d", "link", "show", "type", "bridge"],
            capture_output=True,
            text=True,
            check=True,
        )
        out: dict[str, set[str]] = {b["ifname"]: set() for b in json.loads(res.stdout)}
        for name, link in self.links().items():
            if link.get("master") in out:
                out[link["master"]].add(name)
        return out


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def _retry_locked(*cmd: str) -> None:
    """useradd/userdel fail while another process holds /etc/passwd's lock (or, for userdel,
    while a killed session of the user is still exiting): retry briefly."""
    deadline = time.monotonic() + 10
    while True:
        res = subprocess.run(list(cmd), capture_output=True, text=True)
        if res.returncode == 0:
            return
        busy = any(w in res.stderr for w in ("lock", "used by process"))
        if not busy or time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        time.sleep(0.05)


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 169.254.x.y/30 that no address in the host netns overlaps."""
    res = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    taken = [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
        for link in json.loads(res.stdout or "[]")
        for a in link.get("addr_info", [])
    ]
    for _ in range(100):
        net = ipaddress.ip_network(
            f"169.254.{random.randint(1, 254)}.{random.randrange(0, 256, 4)}/30"
        )
        if not any(net.overlaps(t) for t in taken):
            return net
    raise AssertionError("no free 169.254.0.0/16 /30 in the host netns")


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.01)
    raise AssertionError(f"sshd not listening on {host}:{port}: {log.read_text()[-2000:]}")


def _stop_netns_processes(ns: str) -> None:
    """Every process in the switch netns is ours (sshd, its sessions, their shells)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(p) for p in res.stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            if not res.stdout.split():
                return
            time.sleep(0.01)


def _ssh_keygen(path: Path) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path))
    return Path(f"{path}.pub").read_text().strip()


@contextlib.contextmanager
def linux_switch(
    make_ns: Callable[[], str],
    ports: tuple[str, ...] = ("swp1", "swp2", "swp3"),
    name: str = "tor1",
) -> Iterator[LinuxSwitch]:
    """Build the switch (see the module docstring); tear everything down on the way out."""
    tag = uuid.uuid4().hex[:8]
    user = f"tsw{tag}"
    ns, node = make_ns(), make_ns()
    work = Path(tempfile.mkdtemp(prefix="torshim-sw-"))
    host_if = f"tsh{tag}"
    proc: subprocess.Popen[bytes] | None = None
    user_made = False
    try:
        # -- data path: ports and their VF stand-ins ----------------------------------------
        for p in ports:
            ip(*f"link add vf-{p} netns {node} type veth peer name {p} netns {ns}".split())
            ip("link", "set", p, "up", ns=ns)
            ip("link", "set", f"vf-{p}", "up", ns=node)
        # -- management link ----------------------------------------------------------------
        net = _free_subnet()
        client_ip, switch_ip = (str(a) for a in list(net.hosts())[:2])
        ip("link", "add", host_if, "type", "veth", "peer", "name", "mgmt0", "netns", ns)
        ip("addr", "add", f"{client_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("addr", "add", f"{switch_ip}/30", "dev", "mgmt0", ns=ns)
        ip("link", "set", "mgmt0", "up", ns=ns)
        # -- the user: bare home, key login, CAP_NET_ADMIN login shell ------------------------
        os.chmod(work, 0o711)
        bindir, home, etc, client = work / "bin", work / "home", work / "etc", work / "client"
        for d in (bindir, home, etc, client):
            d.mkdir()
        login = bindir / "login"
        _retry_locked(
            "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
            "--shell", str(login), "--password", "*", user,
        )  # fmt: skip
        user_made = True
        shutil.copy(CAPSH, bindir / "netadmin")
        login.write_text(
            "#!/bin/sh\n"
            "# The switch user's login shell: /bin/sh holding CAP_NET_ADMIN (ambient), no more.\n"
            f"PS1='{user}@{name}:~$ '; PATH=/usr/bin:/bin:/usr/sbin:/sbin; export PS1 PATH\n"
            f"exec {bindir}/netadmin --inh=cap_net_admin --addamb=cap_net_admin"
            ' --shell=/bin/sh -- "$@"\n'
        )
        for f in (bindir, bindir / "netadmin", login):
            shutil.chown(f, "root", user)
            os.chmod(f, 0o750)
        _run("setcap", "cap_net_admin+p", str(bindir / "netadmin"))  # after chown: it clears caps
        (home / ".ssh").mkdir(mode=0o700)
        key = client / "id_ed25519"
        (home / ".ssh" / "authorized_keys").write_text(_ssh_keygen(key) + "\n")
        for f in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            shutil.chown(f, user, user)
        os.chmod(home, 0o700)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        # -- sshd ---------------------------------------------------------------------------
        host_pub = _ssh_keygen(etc / "host_ed25519")
        known_hosts = client / "known_hosts"
        known_hosts.write_text(f"{switch_ip} {host_pub}\n")  # port 22: the bare host form
        conf = etc / "sshd_config"
        conf.write_text(sshd_config(switch_ip, str(etc / "host_ed25519"), user))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        log = work / "sshd.log"
        with open(log, "wb") as out:
            # `ip netns exec` runs in a mount namespace of its own (slave to the host's): a tmpfs
            # on /var/log there catches sshd's wtmp/lastlog records, which would outlive the test.
            start = f"mount -t tmpfs -o size=1m torshim-log /var/log && exec {SSHD} -D -e -f {conf}"
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "sh", "-c", start],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_listening(switch_ip, 22, proc, log)
        yield LinuxSwitch(
            name=name,
            ns=ns,
            node_ns=node,
            host=switch_ip,
            port=22,
            username=user,
            key_file=str(key),
            known_hosts=str(known_hosts),
            ports=tuple(ports),
            workdir=str(work),
            pids=[proc.pid],
        )
    finally:
        # Every step runs even if one fails; the namespaces go with the `netns` fixture.
        _stop_netns_processes(ns)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        if user_made:
            _retry_locked("userdel", user)


@pytest.fixture(name="linux_sw")
def linux_switch_fixture(netns: Callable[[], str]) -> Iterator[LinuxSwitch]:
    with linux_switch(netns) as sw:
        yield sw
