"""Create, inspect and destroy a lab (see lab.topology for the names).

- Every step is recorded in `<state dir>/state.json` *before* it acts (a process as soon as it
  exists), so `destroy` removes exactly what this prefix made, even after a crash; and it also
  removes, by name, whatever the prefix derives (the two netns, every pod netns
  `<prefix>-pod-*`, the management link, the users, the state dir) when no state file is left at
  all. `up` starts with that cleanup.
- The TOR: a netns with ports `swpN` (the VF veth peers), reached over a management veth
  `<prefix>-mg` (host) <-> `mgmt0` (TOR) on a free 172.31.x.y/30. Two flavours (`Lab.switch`):
  - `linux`: an sshd on port 22 for torshim's `linux` driver. Its login user has a bare home
    (only .ssh/authorized_keys) and a login shell that is a private copy of `capsh` with the file
    capability cap_net_admin (+p): the shell raises it as an ambient capability, so it and every
    `ip` it runs hold CAP_NET_ADMIN and nothing else. Without CAP_SYS_ADMIN it cannot enter another
    netns: it administers the TOR netns only. sshd runs under `ip netns exec` with a tmpfs on
    /var/log (in that command's private mount namespace), so no wtmp/lastlog record outlives the lab.
  - `netconf`: netconfd with the OpenConfig modules and its sshd (port 830, NETCONF only), both in
    the TOR netns (lab.netconfd), user `<prefix>-nc`, for torshim's `openconfig` driver; and the TOR
    agent process (`python -m lab.netconf_tor`) on the host, which applies every committed
    switched-vlan config to the bridges of the TOR netns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

from lab import netconfd
from lab.sshd import sshd_config
from lab.topology import Lab, names_for
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec

SSHD = "/usr/sbin/sshd"
CAPSH = shutil.which("capsh") or "/usr/sbin/capsh"
MGMT_POOL = ipaddress.ip_network("172.31.0.0/16")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_READY_TIMEOUT = 20.0  # the agent's first sync: connect (~0.2 s), subscribe, one get-config

Progress = Callable[[str], None]


class LabError(RuntimeError):
    """A step failed; the message is one line."""


def _quiet(_: str) -> None:
    pass


# -- small helpers ------------------------------------------------------------------------------


def run(
    *cmd: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(input)
        except BaseException:
            # Ctrl-C: let the command finish (these are short `ip`/`useradd` calls), so teardown
            # sees what it did; killed half way, `ip netns add` may leave a netns behind teardown.
            proc.communicate()
            raise
    res = subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
    if check and res.returncode != 0:
        msg = " ".join((res.stderr or res.stdout).split())[:300]
        raise LabError(f"{' '.join(cmd[:6])}: {msg}")
    return res


def _retry_locked(*cmd: str) -> None:
    """useradd/userdel fail while /etc/passwd is locked, or while a session of the user is still
    exiting: retry briefly."""
    deadline = time.monotonic() + 10
    while True:
        res = run(*cmd, check=False)
        if res.returncode == 0:
            return
        busy = any(w in res.stderr for w in ("lock", "used by process"))
        if not busy or time.monotonic() > deadline:
            raise LabError(f"{cmd[0]} {cmd[-1]}: {' '.join(res.stderr.split())}")
        time.sleep(0.05)


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def link_names(ns: str | None = None) -> dict[str, dict[str, Any]]:
    res = run("ip", *(["-n", ns] if ns else []), "-j", "link", "show", check=False)
    if res.returncode != 0:
        return {}
    return {link["ifname"]: link for link in json.loads(res.stdout or "[]")}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _procs_naming(state_dir: str) -> list[int]:
    """Live processes whose command line names a path in `state_dir` (never this process or
    its ancestors)."""
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit()
        and int(e) not in mine
        and names_dir(_cmdline(int(e)), state_dir)
        and pid_alive(int(e))
    ]


def names_dir(cmdline: str, state_dir: str) -> bool:
    """Does a command line (`_cmdline`: arguments space-separated, a space at the end) name the
    state dir or a path inside it? `--state-dir SD` counts; `SD2/...` does not."""
    d = state_dir.rstrip("/")
    return f"{d}/" in cmdline or f"{d} " in cmdline


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _kill_all(pids: list[int]) -> list[int]:
    """SIGTERM, then SIGKILL what is left after 2 s; returns the pids that were alive."""
    alive = [p for p in pids if pid_alive(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for pid in alive:
                _reap(pid)
            if not any(pid_alive(p) for p in alive):
                return alive
            time.sleep(0.01)
    return alive


def pod_netns(prefix: str) -> list[str]:
    """The pod netns of lab `prefix` (`<prefix>-pod-*`); prefixes hold no `-`, so never another
    lab's."""
    want = names_for(prefix).pod_ns_prefix
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(want))
    except OSError:
        return []


def leftovers(prefix: str, root: str | None = None) -> list[str]:
    """Anything of lab `prefix` still on the machine: netns (node, TOR, pods), the management
    link, live processes naming its state dir, its users, the state dir."""
    n = names_for(prefix, root)
    out = [f"netns {ns}" for ns in (n.node_ns, n.tor_ns, *pod_netns(prefix)) if netns_exists(ns)]
    if n.mgmt_host_if in link_names():
        out.append(f"link {n.mgmt_host_if}")
    out += [f"process {p} ({_cmdline(p)[:100].strip()})" for p in _procs_naming(n.state_dir)]
    for user in (n.tor_user, n.netconf_user):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            out.append(f"user {user}")
    if os.path.exists(n.state_dir):
        out.append(f"dir {n.state_dir}")
    return out


def netns_pids(ns: str) -> list[int]:
    if not netns_exists(ns):
        return []
    res = run("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split()]


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 of 172.31.0.0/16 that no address or route of the host netns overlaps."""
    taken: list[ipaddress.IPv4Network] = []
    res = run("ip", "-j", "-4", "addr", "show", check=False)
    for link in json.loads(res.stdout or "[]"):
        for a in link.get("addr_info", []):
            taken.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network)
    res = run("ip", "-j", "-4", "route", "show", "table", "all", check=False)
    for r in json.loads(res.stdout or "[]"):
        dst = r.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(dst, strict=False))
    for _ in range(200):
        net = ipaddress.ip_network(
            f"172.31.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}/30"
        )
        if not any(net.overlaps(t) for t in taken):
            return net
    raise LabError("no free /30 in 172.31.0.0/16 on this host")


def _keygen(path: str) -> str:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", path)
    with open(f"{path}.pub") as f:
        return f.read().strip()


def _write(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def tcp_banner(host: str, port: int = 22, timeout: float = 1.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(256).decode(errors="replace").strip() or None
    except OSError:
        return None


# -- the state file -----------------------------------------------------------------------------


class State:
    """`state.json`: the lab, then one entry per made thing, written before it is made."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.data: dict[str, Any] = {"prefix": lab.prefix, "complete": False, "steps": []}

    def save(self) -> None:
        tmp = self.lab.state_file + ".tmp"
        _write(tmp, json.dumps(self.data, indent=1), 0o600)
        os.replace(tmp, self.lab.state_file)

    def record(self, kind: str, **what: Any) -> None:
        self.data["steps"].append({"kind": kind, **what})
        self.save()

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()


def read_state(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


# -- destroy ------------------------------------------------------------------------------------


def _our_user(name: str, state_dir: str) -> bool:
    """The user exists and is the lab's: its home is in the state dir (never touch anyone else)."""
    try:
        home = pwd.getpwnam(name).pw_dir
    except KeyError:
        return False
    return home.rstrip("/").startswith(state_dir.rstrip("/") + "/")


def destroy(prefix: str, root: str | None = None, progress: Progress = _quiet) -> list[str]:
    """Remove everything the lab `prefix` made (idempotent). Returns what was removed."""
    names = names_for(prefix, root)
    state = read_state(names.state_dir) or {}
    steps = state.get("steps", [])
    removed: list[str] = []
    errors: list[str] = []
    progress(f"removing lab {prefix}")
    # 1. processes: recorded ones (only if still ours), then anything left in the lab's netns
    pids = []
    for s in steps:
        if s.get("kind") == "process":
            pid = int(s.get("pid", 0))
            if pid > 0 and names_dir(_cmdline(pid), names.state_dir):
                pids.append(pid)
    # ... and unrecorded ones naming the state dir (the TOR agent lives in the host netns: found
    # so even when state.json is gone, or a crash came between its start and its record)
    pids += [p for p in _procs_naming(names.state_dir) if p not in pids]
    namespaces = [names.tor_ns, names.node_ns, *pod_netns(prefix)]
    for ns in namespaces:
        pids += [p for p in netns_pids(ns) if p not in pids]
    for pid in _kill_all(pids):
        removed.append(f"process {pid}")
    # 2. namespaces (their links, veth peers included, go with them), 3. the host link
    for ns in namespaces:
        if netns_exists(ns):
            res = run("ip", "netns", "del", ns, check=False)
            if res.returncode == 0:
                removed.append(f"netns {ns}")
            else:
                errors.append(f"netns {ns}: {res.stderr.strip()}")
    if names.mgmt_host_if in link_names():
        res = run("ip", "link", "del", names.mgmt_host_if, check=False)
        if res.returncode == 0:
            removed.append(f"link {names.mgmt_host_if}")
        else:
            errors.append(f"link {names.mgmt_host_if}: {res.stderr.strip()}")
    # 4. the users (either flavour's, by name), 5. the state dir
    for user in (names.tor_user, names.netconf_user):
        if _our_user(user, names.state_dir):
            try:
                _retry_locked("userdel", user)
                removed.append(f"user {user}")
            except LabError as e:
                errors.append(str(e))
    if os.path.isdir(names.state_dir):
        shutil.rmtree(names.state_dir, ignore_errors=True)
        removed.append(f"dir {names.state_dir}")
    with contextlib.suppress(OSError):  # the state root, once no lab is left in it
        os.rmdir(os.path.dirname(names.state_dir))
    if errors:
        raise LabError(f"lab {prefix}: could not remove: {'; '.join(errors)}")
    return removed


# -- up -----------------------------------------------------------------------------------------


def check_host(switch: str = "linux") -> None:
    if os.geteuid() != 0:
        raise LabError("nsm-lab needs root (network namespaces, a user, sshd)")
    for tool in ("ip", "ssh-keygen", "useradd", "userdel", "setcap"):
        if shutil.which(tool) is None:
            raise LabError(
                f"nsm-lab needs `{tool}` (apt-get install iproute2 openssh-client passwd libcap2-bin)"
            )
    for path in (SSHD, CAPSH):
        if not os.path.exists(path):
            raise LabError(f"nsm-lab needs {path} (apt-get install openssh-server libcap2-bin)")
    if switch == "netconf":  # checked before anything is built
        missing = netconfd.missing_tools()
        if missing:
            raise LabError(
                f"nsm-lab --switch netconf needs {missing[0]} "
                "(apt-get install netconfd openssh-server util-linux)"
            )
        try:
            netconfd.find_yang_dir()
        except netconfd.NetconfdError as e:
            raise LabError(str(e)) from None


def _ip_batch(lines: list[str], ns: str | None = None) -> None:
    run("ip", *(["-n", ns] if ns else []), "-batch", "-", input="\n".join(lines) + "\n")


def _wait_listening(host: str, proc: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                tail = " ".join(f.read()[-300:].split())
            raise LabError(f"sshd exited with {proc.returncode}: {tail}")
        if tcp_banner(host, 22, 0.2):
            return
        time.sleep(0.01)
    raise LabError(f"sshd is not listening on {host}:22 after 10 s")


def up(lab: Lab, progress: Progress = _quiet) -> dict[str, Any]:
    """Build the lab (after removing any leftovers of the same prefix). On any failure or
    Ctrl-C, everything built so far is removed before the exception goes on."""
    check_host(lab.switch)
    root = os.path.dirname(lab.state_dir)
    cleaned = destroy(lab.prefix, root, progress)
    try:
        info = _build(lab, progress)
    except BaseException:
        # A second Ctrl-C must not interrupt the teardown (main thread only: signal's rule).
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            with contextlib.suppress(Exception):
                progress("failed: tearing down")
                destroy(lab.prefix, root)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
        raise
    info["cleaned"] = cleaned
    return info


def _build(lab: Lab, progress: Progress) -> dict[str, Any]:
    sd = lab.state_dir
    root = os.path.dirname(sd)
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    os.mkdir(sd)
    os.chmod(sd, 0o711)  # the TOR user must reach its home and shell inside
    st = State(lab)
    st.record("dir", path=sd)
    st.set(lab=lab.to_dict())

    progress("namespaces and VF links")
    for ns in (lab.node_ns, lab.tor_ns):
        st.record("netns", name=ns)
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    lines = []
    for vf in lab.vfs:
        st.record("link", name=vf.netdev, ns=lab.node_ns, peer=vf.tor_port, peer_ns=lab.tor_ns)
        lines.append(
            f"link add {vf.netdev} netns {lab.node_ns} address {vf.mac} type veth"
            f" peer name {vf.tor_port} netns {lab.tor_ns}"
        )
    _ip_batch(lines)
    _ip_batch([f"link set {vf.netdev} up" for vf in lab.vfs], lab.node_ns)
    _ip_batch([f"link set {vf.tor_port} up" for vf in lab.vfs], lab.tor_ns)

    progress("fake sysfs")
    fs = FakeSysfs(lab.sysfs)
    for pf in lab.pfs:
        built = fs.add_pf(
            PFSpec(
                model=pf.model,
                pci_address=pf.pci_address,
                ifname=pf.ifname,
                vfs=[VFSpec(binding="netdev", ifname=vf.netdev, mac=vf.mac) for vf in pf.vfs],
            )
        )
        want = tuple(vf.pci_address for vf in pf.vfs)
        if built.vf_addresses != want:  # topology and builder must agree on the VF layout
            raise LabError(f"{pf.ifname}: VF addresses {built.vf_addresses} != {want}")

    progress("management link")
    net = _free_subnet()
    host_ip, tor_ip = (str(a) for a in list(net.hosts())[:2])
    st.record("link", name=lab.mgmt_host_if, ns=None, peer=lab.mgmt_tor_if, peer_ns=lab.tor_ns)
    run("ip", "link", "add", lab.mgmt_host_if, "type", "veth", "peer", "name", lab.mgmt_tor_if,
        "netns", lab.tor_ns)  # fmt: skip
    run("ip", "addr", "add", f"{host_ip}/30", "dev", lab.mgmt_host_if)
    run("ip", "link", "set", lab.mgmt_host_if, "up")
    run("ip", "-n", lab.tor_ns, "addr", "add", f"{tor_ip}/30", "dev", lab.mgmt_tor_if)
    run("ip", "-n", lab.tor_ns, "link", "set", lab.mgmt_tor_if, "up")
    mgmt = {"subnet": str(net), "host": host_ip, "switch": tor_ip}
    st.set(mgmt=mgmt)

    if lab.switch == "netconf":
        tor = _netconf_tor(lab, st, tor_ip, progress)
    else:
        tor = _linux_tor(lab, st, tor_ip, progress)
    info = describe(lab, mgmt, tor.get("sshd_pid"), tor)
    _write(os.path.join(sd, "lab.json"), json.dumps(info, indent=1) + "\n")
    st.set(complete=True)
    return info


def _write_torshim_config(lab: Lab, switch: dict[str, Any]) -> None:
    _write(
        lab.torshim_config,
        f"# Written by nsm-lab for the lab's {lab.switch} TOR; later steps add services and the "
        "port map.\n" + yaml.safe_dump({"switches": [switch]}, sort_keys=False),
    )
    from torshim.config import load_config  # checked now, so later steps can rely on it

    load_config(lab.torshim_config)


def _switch_entry(
    lab: Lab, host: str, port: int, user: str, key: str, known_hosts: str
) -> dict[str, Any]:
    """The `switches:` entry torshim (and the TOR agent) use to reach the lab's TOR."""
    return {
        "name": lab.tor_name,
        "driver": lab.torshim_driver,
        "host": host,
        "port": port,
        "username": user,
        "key_file": key,
        "known_hosts": known_hosts,
        "host_key_checking": True,
        "connect_timeout": 5,
        "command_timeout": 10,
        "confirm_timeout": 30,
    }


def _linux_tor(lab: Lab, st: State, tor_ip: str, progress: Progress) -> dict[str, Any]:
    """The Linux TOR's user and sshd; returns its part of lab.json's `tor`."""
    sd = lab.state_dir
    progress("TOR user")
    bindir, home, etc, client = (os.path.join(sd, d) for d in ("bin", "home", "etc", "client"))
    for d in (bindir, etc, client):
        os.mkdir(d, 0o755 if d == etc else 0o700)
    os.mkdir(home)
    login, netadmin = os.path.join(bindir, "login"), os.path.join(bindir, "netadmin")
    st.record("user", name=lab.tor_user)
    _retry_locked(
        "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
        "--shell", login, "--password", "*", lab.tor_user,
    )  # fmt: skip
    shutil.copy(CAPSH, netadmin)
    _write(
        login,
        "#!/bin/sh\n"
        "# The TOR user's login shell: /bin/sh holding CAP_NET_ADMIN (ambient), nothing more.\n"
        f"PS1='{lab.tor_user}@{lab.tor_name}:~$ '; PATH=/usr/bin:/bin:/usr/sbin:/sbin\n"
        "export PS1 PATH\n"
        f'exec {netadmin} --inh=cap_net_admin --addamb=cap_net_admin --shell=/bin/sh -- "$@"\n',
    )
    for f in (bindir, netadmin, login):
        shutil.chown(f, "root", lab.tor_user)
        os.chmod(f, 0o750)
    run("setcap", "cap_net_admin+p", netadmin)  # after chown, which clears file capabilities
    key = os.path.join(client, "id_ed25519")
    ssh_dir = os.path.join(home, ".ssh")
    os.mkdir(ssh_dir, 0o700)
    auth = os.path.join(ssh_dir, "authorized_keys")
    _write(auth, _keygen(key) + "\n", 0o600)
    for f in (home, ssh_dir, auth):
        shutil.chown(f, lab.tor_user, lab.tor_user)
    os.chmod(home, 0o700)

    progress("sshd in the TOR netns")
    host_key = os.path.join(etc, "host_ed25519")
    known_hosts = os.path.join(client, "known_hosts")
    _write(known_hosts, f"{tor_ip} {_keygen(host_key)}\n")
    conf = os.path.join(etc, "sshd_config")
    _write(conf, sshd_config(tor_ip, host_key, lab.tor_user))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = os.path.join(sd, "sshd.log")
    start = f"mount -t tmpfs -o size=1m nsm-lab-log /var/log && exec {SSHD} -D -e -f {conf}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.tor_ns, "sh", "-c", start],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on the terminal is ours to handle, not sshd's
        )
    st.record("process", pid=proc.pid, what="sshd")
    _write(os.path.join(sd, "sshd.pid"), f"{proc.pid}\n")
    _wait_listening(tor_ip, proc, log)

    progress("torshim config")
    _write_torshim_config(lab, _switch_entry(lab, tor_ip, 22, lab.tor_user, key, known_hosts))
    return {"port": 22, "username": lab.tor_user, "sshd_pid": proc.pid, "key_file": key,
            "known_hosts": known_hosts}  # fmt: skip


def _netconf_tor(lab: Lab, st: State, tor_ip: str, progress: Progress) -> dict[str, Any]:
    """netconfd + sshd in the TOR netns, the torshim config, then the TOR agent; returns their
    part of lab.json's `tor`."""
    sd = lab.state_dir
    progress("netconfd and sshd in the TOR netns")
    try:
        server = netconfd.NetconfServer(
            "candidate",
            [vf.tor_port for vf in lab.vfs],  # NETCONF names = Linux port names: swpN
            user=lab.netconf_user,
            root=os.path.join(sd, "netconf"),
            netns=lab.tor_ns,
            listen=tor_ip,
            port=netconfd.NETCONF_PORT,
            yang_dir=netconfd.find_yang_dir(),
            on_user=lambda name: st.record("user", name=name),
            on_process=lambda what, pid: st.record("process", pid=pid, what=what),
        ).start()
    except netconfd.NetconfdError as e:
        raise LabError(str(e)) from None
    assert server.sshd_pid is not None and server.netconfd_pid is not None  # started

    progress("torshim config")
    _write_torshim_config(
        lab,
        _switch_entry(lab, tor_ip, server.port, server.user, server.key_file, server.known_hosts),
    )

    progress("TOR agent")
    agent_pid = _start_agent(lab, st)
    return {"port": server.port, "username": server.user, "sshd_pid": server.sshd_pid,
            "netconfd_pid": server.netconfd_pid, "agent_pid": agent_pid,
            "key_file": server.key_file, "known_hosts": server.known_hosts}  # fmt: skip


def _start_agent(lab: Lab, st: State) -> int:
    """`python -m lab.netconf_tor` for this lab (its command line names the state dir, so
    destroy may kill it); returns its pid once its first sync is done."""
    ready = os.path.join(lab.state_dir, "agent.ready")
    log = os.path.join(lab.state_dir, "agent.log")
    cmd = [
        sys.executable, "-m", "lab.netconf_tor", "--config", lab.torshim_config,
        "--switch", lab.tor_name, "--netns", lab.tor_ns,
        "--ports", ",".join(vf.tor_port for vf in lab.vfs), "--ready-file", ready,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on the terminal is ours to handle, not its
        )
    st.record("process", pid=proc.pid, what="tor-agent")
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while not os.path.exists(ready):
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                tail = " ".join(f.read()[-300:].split())
            raise LabError(f"TOR agent exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise LabError(f"TOR agent: no first sync after {AGENT_READY_TIMEOUT:g} s (see {log})")
        time.sleep(0.01)
    return proc.pid


def describe(
    lab: Lab, mgmt: dict[str, str], sshd_pid: int | None, tor: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `up` prints: the lab as data. `tor`: the flavour's own fields (port, username, pids,
    client files)."""
    return {
        "prefix": lab.prefix,
        "node": lab.node_name,
        "state_dir": lab.state_dir,
        "namespaces": {"node": lab.node_ns, "tor": lab.tor_ns},
        "pod_netns_prefix": lab.pod_ns_prefix,
        "sysfs_root": lab.sysfs,
        "pfs": [
            {
                "pci_address": pf.pci_address,
                "ifname": pf.ifname,
                "model": pf.model_name,
                "speed_mbps": pf.speed_mbps,
                "vfs": [
                    {
                        "index": vf.index,
                        "pci_address": vf.pci_address,
                        "netdev": vf.netdev,
                        "mac": vf.mac,
                        "tor_port": vf.tor_port,
                    }
                    for vf in pf.vfs
                ],
            }
            for pf in lab.pfs
        ],
        "tor": {
            "name": lab.tor_name,
            "switch": lab.switch,  # the flavour: linux | netconf
            "driver": lab.torshim_driver,  # torshim's driver for it: linux | openconfig
            "address": mgmt.get("switch"),
            "port": 22,
            "host_address": mgmt.get("host"),
            "management_link": lab.mgmt_host_if,
            "username": lab.tor_user,
            "sshd_pid": sshd_pid,
            "torshim_config": lab.torshim_config,
            **(tor or {}),
        },
    }


# -- status -------------------------------------------------------------------------------------


def ssh_command(
    info: dict[str, Any], command: str, timeout: float = 5.0
) -> subprocess.CompletedProcess[str]:
    """Run a command on the TOR as its user with the lab's key and known_hosts (system ssh)."""
    sd, tor = info["state_dir"], info["tor"]
    cmd = [
        "ssh", "-F", "/dev/null", "-i", os.path.join(sd, "client", "id_ed25519"),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={os.path.join(sd, 'client', 'known_hosts')}",
        "-o", "ConnectTimeout=3", f"{tor['username']}@{tor['address']}", command,
    ]  # fmt: skip
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 255, "", "timed out")


def netconf_hello(info: dict[str, Any]) -> tuple[bool, str]:
    """Open a NETCONF session to the lab's netconf TOR as torshim would (its key, known_hosts,
    host key checked); (worked, what it offers or why not)."""
    from torshim.drivers.base import SwitchParams  # torshim is needed only for this check
    from torshim.netconf import CAP, connect

    tor = info["tor"]
    params = SwitchParams(
        name=tor["name"],
        driver=tor["driver"],
        host=tor["address"],
        port=tor["port"],
        username=tor["username"],
        key_file=tor["key_file"],
        known_hosts=tor["known_hosts"],
        connect_timeout=3,
        command_timeout=3,
    )
    try:
        m = connect(params)
    except Exception as e:  # any failure is the answer
        return False, " ".join(str(e).split())[:120]
    try:
        caps = {c.split("?", 1)[0] for c in m.server_capabilities}
        offers = [c for c in ("candidate", "confirmed-commit", "notification")
                  if any(u.startswith(CAP + c + ":") for u in caps)]  # fmt: skip
        return True, f"NETCONF hello, session {m.session_id}: {', '.join(offers)}"
    finally:
        with contextlib.suppress(Exception):
            m.close_session()


def status(prefix: str, root: str | None = None) -> dict[str, Any]:
    """Is each piece of the lab there? `ok` is true only when all of it is."""
    names = names_for(prefix, root)
    state = read_state(names.state_dir)
    checks: list[dict[str, Any]] = []

    def check(what: str, name: str, ok: bool, detail: str = "") -> None:
        checks.append({"what": what, "name": name, "ok": ok, "detail": detail})

    try:
        with open(os.path.join(names.state_dir, "lab.json")) as f:
            info: dict[str, Any] | None = json.load(f)
    except (OSError, ValueError):
        info = None
    complete = bool(state and state.get("complete"))
    word = "complete" if complete else "absent" if state is None else "incomplete"
    check("state", names.state_dir, complete and info is not None, word)
    for ns in (names.node_ns, names.tor_ns):
        check("netns", ns, netns_exists(ns))
    pods = pod_netns(prefix)
    if pods:  # information only: pods come and go with the workloads
        check("pods", names.pod_ns_prefix + "*", True, ", ".join(pods))
    if info is not None:
        node_links, tor_links = link_names(names.node_ns), link_names(names.tor_ns)
        for pf in info["pfs"]:
            for vf in pf["vfs"]:
                # A veth end lives exactly as long as its peer: the TOR port says whether the VF
                # exists; not in the node netns means a pod has it (renamed there, e.g. nsm0).
                ok = vf["tor_port"] in tor_links
                detail = f"{vf['pci_address']} <-> {names.tor_ns}:{vf['tor_port']}"
                where = "" if vf["netdev"] in node_links or not ok else " (in a pod)"
                check("vf", vf["netdev"], ok, detail + where)
        tor = info["tor"]
        check("link", names.mgmt_host_if, names.mgmt_host_if in link_names(),
              f"{tor['host_address']} -> {tor['address']}")  # fmt: skip

        def alive(what: str, key: str) -> bool:
            pid = tor.get(key)
            ok = bool(pid) and pid_alive(pid) and names_dir(_cmdline(pid), names.state_dir)
            check(what, str(pid), ok)
            return ok

        if tor.get("switch", "linux") == "netconf":
            # `&`, not `and`: both get their check row
            up = alive("netconfd", "netconfd_pid") & alive("sshd", "sshd_pid")
            alive("tor-agent", "agent_pid")
            ok, detail = netconf_hello(info) if up else (False, "")
            check("reachable", f"{tor['username']}@{tor['address']}:{tor['port']}", ok, detail)
        else:
            res = (
                ssh_command(info, "ip -br link show dev mgmt0")
                if alive("sshd", "sshd_pid")
                else None
            )
            ok = res is not None and res.returncode == 0 and "mgmt0" in res.stdout
            detail = (
                "ssh login, ip runs"
                if ok
                else (" ".join((res.stderr or "").split())[:120] if res else "")
            )
            check("reachable", f"{tor['username']}@{tor['address']}", ok, detail)
    return {
        "prefix": prefix,
        "ok": all(c["ok"] for c in checks),
        "present": any(c["ok"] for c in checks),
        "checks": checks,
        "lab": info,
    }
