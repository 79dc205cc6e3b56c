"""A stand-in node for nsmgr tests: a node namespace holding veth ends named like the VFs of a fake
sysfs tree (their peers stay beside them), pod namespaces, and the agent's config pointing at all
of it. Nothing is created in the machine's own namespace; deleting the node namespace (the `netns`
fixture does) takes every veth with it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PF_PCI = "0000:3b:00.0"
SERVICE = "myns.example.com"


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def ip_batch(lines: list[str], ns: str) -> None:
    res = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise AssertionError(f"ip -batch in {ns}: {res.stderr.strip()}")


def links(ns: str) -> dict[str, dict[str, Any]]:
    """Every link of a namespace by name, as `ip -j -d link` shows it."""
    return {link["ifname"]: link for link in json.loads(ip("-j", "-d", "link", "show", ns=ns))}


def shape(link: dict[str, Any]) -> dict[str, Any]:
    """What must come back exactly after a detach."""
    return {
        "ifname": link["ifname"],
        "ifindex": link["ifindex"],
        "mac": link["address"],
        "mtu": link["mtu"],
        "up": "UP" in link["flags"],
        "altnames": sorted(link.get("altnames", [])),
    }


@dataclass
class FakeNode:
    ns: str  # the node's namespace (a name under /run/netns)
    root: str  # a short private dir: fake sysfs, state dir, socket
    vfs: list[str]  # PCI addresses of the netdev VFs, vf0..vfN-1
    vfio: list[str]  # PCI addresses of the vfio-pci VFs
    make_netns: Callable[[], str]
    services: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sysfs(self) -> str:
        return os.path.join(self.root, "sys")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "nsm.sock")

    def pod(self) -> str:
        """A new pod namespace; returns its path."""
        return f"/run/netns/{self.make_netns()}"

    def config(self, **over: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "node_name": "node-a",
            "state_dir": self.state_dir,
            "socket": self.socket,
            "sysfs_root": self.sysfs,
            "node_netns": f"/run/netns/{self.ns}",
            "pf_side": "none",
            "metrics": {"port": 0},
            "services": self.services,
        }
        cfg.update(over)
        return cfg

    def write_config(self, **over: Any) -> str:
        path = os.path.join(self.root, f"nsmgr-{len(os.listdir(self.root))}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.config(**over), f)
        return path

    def links(self) -> dict[str, dict[str, Any]]:
        return links(self.ns)

    def shapes(self) -> dict[str, dict[str, Any]]:
        """The VF stand-ins on the node, by name (the peers and the PF are left out)."""
        return {n: shape(link) for n, link in self.links().items() if n.startswith("vf")}

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


DEFAULT_SERVICES = [
    {
        "name": SERVICE,
        "mtu": 1400,
        "subnet": "10.10.0.0/24",
        "routes": [{"prefix": "10.20.0.0/16", "via": "10.10.0.1"}],
        "dns": {"servers": ["10.10.0.53"], "search": ["myns.example.com"]},
        "mac": "assign",
        "allowed_namespaces": ["default", "myns"],
    },
    {"name": "open.example.com", "allowed_namespaces": ["*"]},
]


def build_node(make_netns: Callable[[], str], n_vfs: int = 4, n_vfio: int = 1) -> FakeNode:
    """VFs vf0..vfN-1 (veth ends, down, MTU 1500, one altname each on vf0) plus vfio-pci ones,
    behind PF pf0 (a veth end too, so a netlink PF side has something to refuse)."""
    ns = make_netns()
    root = tempfile.mkdtemp(prefix="nsm")  # short: the socket path must fit in 107 bytes
    lines = ["link add pf0 type veth peer name pf0p"]
    lines += [f"link add vf{i} type veth peer name tp{i}" for i in range(n_vfs)]
    if n_vfs:
        lines.append("link property add dev vf0 altname enp59s2")
    ip_batch(lines, ns)
    fs = FakeSysfs(os.path.join(root, "sys"))
    vfs = [VFSpec(ifname=f"vf{i}") for i in range(n_vfs)] + [VFSpec(binding="vfio")] * n_vfio
    built = fs.add_pf(PFSpec(model="e810", pci_address=PF_PCI, ifname="pf0", vfs=vfs))
    addresses = list(built.vf_addresses)
    return FakeNode(
        ns=ns,
        root=root,
        vfs=addresses[:n_vfs],
        vfio=addresses[n_vfs:],
        make_netns=make_netns,
        services=[dict(s) for s in DEFAULT_SERVICES],
    )


class Serve:
    """`nsmgr serve` as a subprocess (the real daemon: its signals, its socket). Stopped with
    SIGTERM on exit, killed if it does not stop; its log is in `log` for failure messages."""

    def __init__(self, config: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config + ".log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def start(self, socket_path: str, timeout: float = 20.0) -> Serve:
        import sys
        import time

        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsmgr.cli",
                "--log-level",
                "debug",
                "serve",
                "--config",
                self.config,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=REPO,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _serving(socket_path):
            if self.proc.poll() is not None:
                raise AssertionError(f"nsmgr serve exited {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nsmgr serve not serving after {timeout:g}s:\n{self.log}")
            time.sleep(0.02)
        return self

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serving(path: str) -> bool:
    """The socket accepts connections (grpc binds it before it serves, so connect, not exists)."""
    import socket as sk

    if not os.path.exists(path):
        return False
    with sk.socket(sk.AF_UNIX, sk.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
