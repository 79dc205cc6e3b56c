"""A real NETCONF switch: Debian's netconfd with the OpenConfig modules behind a private sshd
(see ../shared/TESTBED.md, "NETCONF").

Two users of the one builder: the lab's netconf TOR (`nsm-lab up --switch netconf`: both processes
run inside the TOR netns and sshd listens on the TOR's management address, port 830, so torshim
on the host reaches it like a real switch) and the tests (tests/torshim/netconf_server.py: on
127.0.0.1:<free port> of the host).

Everything is private to one `NetconfServer`: a dedicated system user (netconfd's `--superuser`,
so NACM lets it write), its own home / YUMA_HOME / ncxserver socket under `root`, an sshd with its
own host key whose only login is that user's key, and whose every session runs the netconf
subsystem (ForceCommand: the key opens NETCONF, never a shell). The startup config lists the
switch's ports, so the server behaves like a switch: edits to those ports are accepted, unknown
ports rejected. A known_hosts file for the client is written next to the key.

`stop()` ends only the processes it started (by pid, with their children), waits for netconfd to
exit (it unlinks its socket, 1-4 s), deletes the user and the files, even when start failed half
way. The lab does not call it: it records the user and each process (hooks `on_user`,
`on_process`) and its `destroy` removes them by that record.

Found while building it (beyond TESTBED.md): netconfd admits an SSH session only if the sshd port
is among its `--port`s (else "agt_connect error (access denied)" right after login); it needs
`$YUMA_HOME/data` to exist; a user made with useradd's default locked password ('!') cannot log in
to an sshd without PAM, hence `-p '*'`. In a netns, netconfd is started as
`ip netns exec NS setpriv ...` (dropping to the user before `ip` would leave it unable to enter
the netns); both `ip netns exec` and `setpriv` exec, so the pid we hold is netconfd's own.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from torshim.drivers.base import SwitchParams

REPO = Path(__file__).resolve().parents[1]
YANG_ENV = "NSM_LAB_YANG_DIR"
DEFAULT_YANG_DIR = REPO.parent / "shared/yang/openconfig"
YUMA_MODULES = Path("/usr/share/yuma/modules")
NETCONFD = "/usr/sbin/netconfd"
SSHD = "/usr/sbin/sshd"
SUBSYSTEM = "/usr/sbin/netconf-subsystem"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
NETCONF_PORT = 830  # IANA's NETCONF-over-SSH port: free in a netns of its own
MODULES = (
    "iana-if-type",
    "ietf-interfaces",
    "openconfig-interfaces",
    "openconfig-if-ethernet",
    "openconfig-vlan",
)
OC_IF = "http://openconfig.net/yang/interfaces"

Mode = Literal["candidate", "running"]
Proc = tuple[int, str]  # pid and its start time: a pid alone may be reused by then


class NetconfdError(RuntimeError):
    """netconfd or its sshd cannot be set up; the message is one line."""


def find_yang_dir() -> Path:
    """The OpenConfig YANG modules: $NSM_LAB_YANG_DIR, else <repo>/../shared/yang/openconfig."""
    env = os.environ.get(YANG_ENV)
    path = Path(env) if env else DEFAULT_YANG_DIR
    if not (path / "openconfig-vlan.yang").is_file():
        where = f"${YANG_ENV}={env}" if env else str(path)
        raise NetconfdError(
            f"no OpenConfig YANG modules (openconfig-vlan.yang ...) in {where}: set {YANG_ENV} "
            "to the directory holding them"
        )
    return path


def missing_tools() -> list[str]:
    """What this builder needs from the host and cannot find (Debian: netconfd, openssh-server,
    util-linux)."""
    return [p for p in (NETCONFD, SUBSYSTEM, SSHD, SETPRIV) if not os.path.exists(p)]


def startup_xml(ports: Sequence[str]) -> str:
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


def sshd_config(
    listen: str, port: int, host_key: str, pidfile: str, auth_keys: str, user: str, socket: str
) -> str:
    sub = f"{SUBSYSTEM} --ncxserver-sockname={port}@{socket}"
    return (
        f"Port {port}\n"
        f"ListenAddress {listen}\n"
        f"HostKey {host_key}\n"
        f"PidFile {pidfile}\n"
        f"AuthorizedKeysFile {auth_keys}\n"
        f"AllowUsers {user}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding no\n"
        "AllowAgentForwarding no\nPermitTTY no\nPrintMotd no\nPrintLastLog no\nUseDNS no\n"
        "LogLevel ERROR\n"
        f"Subsystem netconf {sub}\n"
        # Whatever a session asks for (shell, exec, subsystem), it gets NETCONF.
        f"ForceCommand {sub}\n"
    )


def known_hosts_line(host: str, port: int, pub: str) -> str:
    kind, key = pub.split()[:2]
    return f"{host if port == 22 else f'[{host}]:{port}'} {kind} {key}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _kill(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_if_same(proc: Proc, sig: int) -> None:
    st = _stat(proc[0])
    if st is not None and st[19] == proc[1]:
        _kill(proc[0], sig)


def listening(addr: str, port: int, pid: int | str = "self") -> bool:
    """Whether something listens on addr:port in the netns of `pid`, read from /proc (a probe
    connection would make sshd log a failed key exchange)."""
    want = f"{socket.inet_aton(addr)[::-1].hex().upper()}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            return any(
                cols[1] == want and cols[3] == "0A" for cols in (line.split() for line in f) if cols
            )
    except OSError:
        return False


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


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise NetconfdError(f"{' '.join(cmd[:4])}: {' '.join(res.stderr.split())[:300]}")


class NetconfServer:
    """One netconfd + sshd pair.

    mode "candidate": --target=candidate; "running": --target=running --with-startup=true
    (:writable-running + :startup). `netns`: run both in that netns (sshd with a private tmpfs on
    /var/log, so no login record outlives it); `listen`/`port`: sshd's address (port None: a free
    port of 127.0.0.1, retried when taken meanwhile). `root`: the directory of all its files
    (None: a fresh temporary one). `on_user(name)` runs before the user is made, `on_process(what,
    pid)` as soon as each process exists: the lab records them there."""

    def __init__(
        self,
        mode: Mode = "candidate",
        ports: Sequence[str] = (),
        *,
        user: str | None = None,
        root: str | os.PathLike[str] | None = None,
        netns: str | None = None,
        listen: str = "127.0.0.1",
        port: int | None = None,
        yang_dir: str | os.PathLike[str] | None = None,
        log_level: str = "warn",
        keep_logs: str | None = None,
        on_user: Callable[[str], None] | None = None,
        on_process: Callable[[str, int], None] | None = None,
    ) -> None:
        self.mode: Mode = mode
        self.ports = tuple(ports)
        self.log_level = log_level
        self.netns = netns
        self.listen = listen
        self.fixed_port = port
        self.yang_dir = Path(yang_dir) if yang_dir is not None else find_yang_dir()
        self.keep_logs = keep_logs  # a directory: netconfd's and sshd's logs are copied there
        self.on_user = on_user
        self.on_process = on_process
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="torshim-nc-"))
        else:
            self.root = Path(root)
            self.root.mkdir(mode=0o755, exist_ok=True)
        self.user = user or f"tsnc{uuid.uuid4().hex[:8]}"
        self.home = self.root / "home"
        self.socket = self.home / "ncxserver.sock"
        self.key_file = str(self.root / "client_key")
        self.known_hosts = str(self.root / "known_hosts")
        self.wrong_known_hosts = str(self.root / "known_hosts.wrong")
        self.port = port or 0
        self.uid = self.gid = -1
        self._user_made = False
        self._made_run_sshd = False
        self._netconfd: subprocess.Popen[bytes] | None = None
        self._sshd: subprocess.Popen[bytes] | None = None

    @property
    def netconfd_pid(self) -> int | None:
        return self._netconfd.pid if self._netconfd else None

    @property
    def sshd_pid(self) -> int | None:
        return self._sshd.pid if self._sshd else None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> NetconfServer:
        try:
            self._make_user()
            for _attempt in range(1 if self.fixed_port else 5):
                # netconfd must know the port: it only admits sessions of its --port
                self.port = self.fixed_port or free_port()
                self._start_netconfd()
                if self._start_sshd():
                    break
                self._stop_processes()  # the port was taken in between: try another
            else:
                tail = " ".join(self.log("sshd.log", root=True).split())[-300:]
                raise NetconfdError(f"sshd did not listen on {self.listen}:{self.port}: {tail}")
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
                raise NetconfdError(f"could not delete user {self.user}")
            subprocess.run(["groupdel", self.user], capture_output=True)
            self._user_made = False
        if self.keep_logs and self.root.exists():
            for name in ("home/netconfd.log", "sshd.log"):
                with contextlib.suppress(OSError):
                    dest = Path(self.keep_logs) / f"{self.user}-{Path(name).name}"
                    shutil.copy(self.root / name, dest)
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
        if self.on_user:
            self.on_user(self.user)
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
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nsm-netconf", "-f", str(key))
        auth = self.home / ".ssh/authorized_keys"
        auth.write_text(Path(self.key_file + ".pub").read_text())
        for path in (self.home, self.home / ".ssh", self.home / "yuma", self.home / "yuma/data",
                     startup, auth):  # fmt: skip
            os.chown(path, self.uid, self.gid)
        self.home.chmod(0o700)
        auth.chmod(0o600)

    def _in_netns(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else list(cmd)

    def _started(self, what: str, proc: subprocess.Popen[bytes]) -> None:
        if self.on_process:
            self.on_process(what, proc.pid)

    def _start_netconfd(self) -> None:
        args = [
            NETCONFD,
            f"--ncxserver-sockname={self.socket}",
            f"--port={self.port}",
            f"--superuser={self.user}",
            f"--modpath={self.yang_dir}:{YUMA_MODULES}",
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
        if self.netns:  # root enters the netns, then setpriv drops to the user
            cmd = self._in_netns(SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}",
                                 "--clear-groups", "--", *args)  # fmt: skip
            self._netconfd = subprocess.Popen(
                cmd, cwd=self.home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        else:
            self._netconfd = subprocess.Popen(
                args, cwd=self.home, env=env, user=self.uid, group=self.gid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self._started("netconfd", self._netconfd)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._netconfd.poll() is not None or time.monotonic() > deadline:
                tail = " ".join(self.log("netconfd.log").split())[-300:]
                raise NetconfdError(f"netconfd did not start: {tail}")
            time.sleep(0.005)

    def _start_sshd(self) -> bool:
        """False when sshd could not listen on self.port (taken since free_port() looked)."""
        if not os.path.isdir("/run/sshd"):  # sshd's privilege separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self._made_run_sshd = self.netns is None  # the lab leaves it, as its Linux TOR does
        ssh = self.root / "ssh"
        config = ssh / "sshd_config"
        config.write_text(
            sshd_config(self.listen, self.port, str(ssh / "host_key"), str(ssh / "sshd.pid"),
                        str(self.home / ".ssh/authorized_keys"), self.user, str(self.socket))
        )  # fmt: skip
        sshd = [SSHD, "-D", "-e", "-f", str(config)]
        if self.netns:  # a private /var/log (ip netns exec's own mount namespace): no wtmp records
            sshd = self._in_netns("sh", "-c", "mount -t tmpfs -o size=1m nsm-lab-log /var/log && "
                                  f"exec {' '.join(sshd)}")  # fmt: skip
        with open(self.root / "sshd.log", "ab") as log:
            self._sshd = subprocess.Popen(
                sshd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._started("sshd", self._sshd)
        deadline = time.monotonic() + 5
        while self._sshd.poll() is None and time.monotonic() < deadline:
            if listening(self.listen, self.port, self._sshd.pid):
                break
            time.sleep(0.005)
        else:
            return False
        host_pub = (ssh / "host_key.pub").read_text()
        other_pub = (ssh / "other_host_key.pub").read_text()
        Path(self.known_hosts).write_text(known_hosts_line(self.listen, self.port, host_pub))
        Path(self.wrong_known_hosts).write_text(known_hosts_line(self.listen, self.port, other_pub))
        return True

    # -- for clients ----------------------------------------------------------------------------
    def params(self, driver: str = "openconfig", **kw: object) -> SwitchParams:
        base: dict[str, object] = dict(
            name="tor1",
            driver=driver,
            host=self.listen,
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
