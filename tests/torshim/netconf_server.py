"""A real NETCONF switch on loopback: Debian's netconfd behind a private sshd (see
../shared/TESTBED.md, "NETCONF").

Everything is private to one `NetconfServer`: a dedicated system user (netconfd's `--superuser`, so
NACM lets it write), its own home / YUMA_HOME / ncxserver socket, an sshd on 127.0.0.1:<free port>
with its own host key, key-only login for that user, and a known_hosts file for the client. The
startup config lists switch ports Ethernet1/1..Ethernet1/8 so the server behaves like a switch:
edits to those ports are accepted, unknown ports rejected.

`stop()` ends only the processes it started (by pid, with their children), waits for netconfd to
exit (it unlinks its socket, 1-4 s), deletes the user and the files, even when start failed half way.

Found while building it (beyond ../shared/TESTBED.md): netconfd admits an SSH session only if the
sshd port is among its `--port`s (else "agt_connect error (access denied)" right after login); it
needs `$YUMA_HOME/data` to exist; a user made with useradd's default locked password ('!') cannot
log in to an sshd without PAM, hence `-p '*'`. Debugging: TORSHIM_NETCONFD_LOG_LEVEL=debug and
TORSHIM_NETCONFD_KEEP_LOGS=<dir> keep netconfd's log after stop().
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from torshim.drivers.base import SwitchParams

REPO = Path(__file__).resolve().parents[2]
YANG_DIR = Path(os.environ.get("TORSHIM_OPENCONFIG_YANG", REPO.parent / "shared/yang/openconfig"))
YUMA_MODULES = Path("/usr/share/yuma/modules")
NETCONFD = "/usr/sbin/netconfd"
SSHD = "/usr/sbin/sshd"
SUBSYSTEM = "/usr/sbin/netconf-subsystem"
PORTS = tuple(f"Ethernet1/{i}" for i in range(1, 9))
MODULES = (
    "iana-if-type",
    "ietf-interfaces",
    "openconfig-interfaces",
    "openconfig-if-ethernet",
    "openconfig-vlan",
)
OC_IF = "http://openconfig.net/yang/interfaces"

needs_netconfd = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(Path(p).exists() for p in (NETCONFD, SSHD, SUBSYSTEM))
    or not YANG_DIR.is_dir()
    or shutil.which("useradd") is None,
    reason="needs root, netconfd, openssh-server and the OpenConfig YANG modules",
)


def startup_xml(ports: tuple[str, ...] = PORTS) -> str:
    """The switch's ports as plain Ethernet interfaces, no VLAN config."""
    items = "".join(
        f"<interface><name>{p}</name><config><name>{p}</name>"
        f"<type xmlns:ianaift='urn:ietf:params:xml:ns:yang:iana-if-type'>ianaift:ethernetCsmacd</type>"
        f"</config></interface>"
        for p in ports
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<config xmlns='urn:ietf:params:xml:ns:netconf:base:1.0'>"
        f"<interfaces xmlns='{OC_IF}'>{items}</interfaces></config>\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Proc = tuple[int, str]  # pid and its start time: a pid alone may be reused by then


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state, ppid, ..., starttime at [19])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[Proc]:
    """All descendants of pid (per-connection sshd processes, netconf-subsystem)."""
    procs = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(e))}
    out: list[Proc] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, st in procs.items() if int(st[1]) == p]
        out.extend((c, procs[c][19]) for c in kids)
        todo.extend(kids)
    return out


def _kill_if_same(proc: Proc, sig: int) -> None:
    st = _stat(proc[0])
    if st is not None and st[19] == proc[1]:
        _kill(proc[0], sig)


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (a probe connection would
    make sshd log a failed key exchange)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(
            cols[1] == want and cols[3] == "0A" for cols in (line.split() for line in f) if cols
        )


def _sshd_alive() -> bool:
    """Whether any sshd (not a zombie) runs: then /run/sshd is in use and stays."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    comm, rest = f.read().split(" ", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue
            if comm == "(sshd" and rest.split()[0] != "Z":
                return True
    return False


def _kill(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")


@dataclass
class NetconfServer:
    """One netconfd + sshd pair. mode "candidate": --target=candidate; "running":
    --target=running --with-startup=true (:writable-running + :startup)."""

    mode: Literal["candidate", "running"] = "candidate"
    ports: tuple[str, ...] = PORTS
    log_level: str = os.environ.get("TORSHIM_NETCONFD_LOG_LEVEL", "warn")

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="torshim-nc-"))
        self.user = f"tsnc{uuid.uuid4().hex[:8]}"
        self.home = self.root / "home"
        self.socket = self.home / "ncxserver.sock"
        self.key_file = str(self.root / "client_key")
        self.known_hosts = str(self.root / "known_hosts")
        self.wrong_known_hosts = str(self.root / "known_hosts.wrong")
        self.port = 0
        self._user_made = False
        self._made_run_sshd = False
        self._netconfd: subprocess.Popen[bytes] | None = None
        self._sshd: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> NetconfServer:
        try:
            self._make_user()
            for _attempt in range(5):
                self.port = free_port()  # netconfd must know it: it only admits its --port
                self._start_netconfd()
                if self._start_sshd():
                    break
                self._stop_processes()  # the port was taken in between: try another
            else:
                raise RuntimeError(f"sshd did not start:\n{self.log('sshd.log', root=True)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; safe after a failed start."""
        self._stop_processes()
        if self._user_made:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                res = subprocess.run(["userdel", self.user], capture_output=True, text=True)
                if res.returncode == 0 or "does not exist" in res.stderr:
                    break
                time.sleep(0.1)  # a session process of the user is still exiting
            with contextlib.suppress(KeyError):
                pwd.getpwnam(self.user)
                raise RuntimeError(f"could not delete test user {self.user}")
            subprocess.run(["groupdel", self.user], capture_output=True)
            self._user_made = False
        keep = os.environ.get("TORSHIM_NETCONFD_KEEP_LOGS")  # a directory, for debugging
        if keep and self.root.exists():
            for name in ("home/netconfd.log", "sshd.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(self.root / name, Path(keep) / f"{self.user}-{Path(name).name}")
        shutil.rmtree(self.root, ignore_errors=True)
        if self._made_run_sshd and not _sshd_alive():
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")  # made by us and no other sshd uses it
            self._made_run_sshd = False

    def __enter__(self) -> NetconfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_processes(self) -> None:
        """sshd first (and the per-connection sshd / netconf-subsystem it forked), then netconfd,
        waiting for it: it unlinks its socket on the way out."""
        for proc, grace in ((self._sshd, 5.0), (self._netconfd, 10.0)):
            if proc is None:
                continue
            kids = _children(proc.pid)
            _kill(proc.pid)
            for kid in kids:
                _kill_if_same(kid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _kill(proc.pid, signal.SIGKILL)  # our Popen child: its pid is ours until waited
                proc.wait(5)
            for kid in kids:
                _kill_if_same(kid, signal.SIGKILL)
        self._sshd = self._netconfd = None

    # -- pieces ---------------------------------------------------------------------------------
    def _make_user(self) -> None:
        self.root.chmod(0o755)
        # -p '*': not a usable password, yet not "locked" ('!'), which sshd would refuse without PAM.
        _run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             str(self.home), "--shell", "/bin/sh", "-p", "*", self.user)  # fmt: skip
        self._user_made = True
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        (self.home / ".ssh").mkdir(parents=True)
        (self.home / "yuma/data").mkdir(parents=True)  # netconfd keeps its txid file there
        startup = self.home / "startup.xml"
        startup.write_text(startup_xml(self.ports))
        ssh = self.root / "ssh"
        ssh.mkdir(mode=0o700)
        for key in (ssh / "host_key", ssh / "other_host_key", Path(self.key_file)):
            _run(
                "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "torshim-test", "-f", str(key)
            )
        auth = self.home / ".ssh/authorized_keys"
        auth.write_text(Path(self.key_file + ".pub").read_text())
        for path in (
            self.home,
            self.home / ".ssh",
            self.home / "yuma",
            self.home / "yuma/data",
            startup,
            auth,
        ):
            os.chown(path, self.uid, self.gid)
        self.home.chmod(0o700)
        auth.chmod(0o600)

    def _start_netconfd(self) -> None:
        args = [
            NETCONFD,
            f"--ncxserver-sockname={self.socket}",
            f"--port={self.port}",
            f"--superuser={self.user}",
            f"--modpath={YANG_DIR}:{YUMA_MODULES}",
            *(f"--module={m}" for m in MODULES),
            f"--startup={self.home / 'startup.xml'}",
            f"--yuma-home={self.home / 'yuma'}",
            f"--log={self.home / 'netconfd.log'}",
            f"--log-level={self.log_level}",
        ]
        if self.mode == "candidate":
            args.append("--target=candidate")
        else:
            args += ["--target=running", "--with-startup=true"]
        env = {
            "HOME": str(self.home),
            "YUMA_HOME": str(self.home / "yuma"),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "USER": self.user,
        }
        self._netconfd = subprocess.Popen(
            args,
            cwd=self.home,
            env=env,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._netconfd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"netconfd did not start:\n{self.log('netconfd.log')}")
            time.sleep(0.005)

    def _start_sshd(self) -> bool:
        """False when sshd could not listen on self.port (taken since free_port() looked)."""
        if not os.path.isdir("/run/sshd"):  # sshd's privilege separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self._made_run_sshd = True
        ssh = self.root / "ssh"
        config = ssh / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {ssh / 'host_key'}\n"
            f"PidFile {ssh / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.home / '.ssh/authorized_keys'}\n"
            f"AllowUsers {self.user}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\n"
            "LogLevel ERROR\n"
            f"Subsystem netconf {SUBSYSTEM} --ncxserver-sockname={self.port}@{self.socket}\n"
        )
        with open(self.root / "sshd.log", "ab") as log:
            self._sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 5
        while self._sshd.poll() is None and time.monotonic() < deadline:
            if _listening(self.port):
                break
            time.sleep(0.005)
        else:
            return False
        host_pub = (ssh / "host_key.pub").read_text().split()
        other_pub = (ssh / "other_host_key.pub").read_text().split()
        Path(self.known_hosts).write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        Path(self.wrong_known_hosts).write_text(
            f"[127.0.0.1]:{self.port} {other_pub[0]} {other_pub[1]}\n"
        )
        return True

    # -- helpers for tests ----------------------------------------------------------------------
    def params(self, driver: str = "openconfig", **kw: object) -> SwitchParams:
        base: dict[str, object] = dict(
            name="tor1",
            driver=driver,
            host="127.0.0.1",
            port=self.port,
            username=self.user,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
            connect_timeout=10.0,
            command_timeout=10.0,
            confirm_timeout=3,
        )
        base.update(kw)
        return SwitchParams(**base)  # type: ignore[arg-type]

    def log(self, name: str, root: bool = False) -> str:
        path = (self.root if root else self.home) / name
        try:
            return path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_server(mode: Literal["candidate", "running"] = "candidate") -> Iterator[NetconfServer]:
    server = NetconfServer(mode)
    with server:
        yield server


@pytest.fixture(scope="session")
def netconf_server() -> Iterator[NetconfServer]:
    """netconfd with --target=candidate; shared by the tests of a session (startup is ~0.1 s, but
    stop waits for netconfd, 1-4 s). Tests reset the ports themselves."""
    with running_server("candidate") as server:
        yield server


@pytest.fixture(scope="session")
def netconf_server_running() -> Iterator[NetconfServer]:
    """netconfd with --target=running --with-startup=true (no candidate)."""
    with running_server("running") as server:
        yield server
