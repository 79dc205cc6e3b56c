"""Helpers for the end-to-end tests of `sriov-device-plugin`: a node (fake sysfs host, kubelet
folders, /dev), the daemon as a subprocess, and a ListAndWatch recorder.

Every wait is bounded; `Node.close()` stops every daemon, stand-in and stream it started, even
after a failure, and kills a daemon that does not stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from lab.kubelet import KubeletStandIn, PodResourcesStandIn, SeenDevice
from nicinventory.fakesysfs import BuiltHost, FakeSysfs, build_host, load_spec
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as dp_pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc

WAIT = 15.0  # upper bound of every wait; a passing run never gets near it
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# The sample host (nicinventory/fakesysfs/sample-host.yaml), as the daemon sees it.
ENS1F0 = "0000:3b:00.0"  # e810, NUMA 0: VFs 0-5 iavf, 6 vfio-pci, 7 unbound
ENS1F1 = "0000:3b:00.1"  # e810, NUMA 0: VFs 0-3 iavf
CX6 = "0000:86:00.0"  # cx6dx, NUMA 1, RDMA: VFs 0-3 mlx5_core, 4-5 vfio-pci
X710 = "0000:af:00.0"  # x710, NUMA 1, link down: VFs 0-3 iavf
ENS1F0_VFS = [f"0000:3b:02.{i}" for i in range(8)]
ENS1F1_VFS = [f"0000:3b:12.{i}" for i in range(4)]
CX6_VFS = [f"0000:86:02.{i}" for i in range(6)]
X710_VFS = [f"0000:af:02.{i}" for i in range(4)]


# The NSM form: PFs by name or PCI address, capabilities x service domains.
NSM_CONFIG = """
nsm:
  pfs:
    - {pf: ens1f0, capabilities: [100g], serviceDomains: [example.com, other.org]}
    - {pf: "0000:3b:00.1", capabilities: [100g], serviceDomains: [example.com]}
    - {pf: ens3f0np0, capabilities: [100g-rdma], serviceDomains: [example.com],
       excludeTopology: true}
    - {pf: ens5f0, capabilities: [10g], serviceDomains: [example.com]}
"""
NSM_POOLS = {"example.com/100g", "other.org/100g", "example.com/100g-rdma", "example.com/10g"}


def healthy(*ids: str, numa: int | None = 0) -> dict[str, SeenDevice]:
    return {i: SeenDevice(i, "Healthy", () if numa is None else (numa,)) for i in ids}


def unhealthy(*ids: str, numa: int | None = 0) -> dict[str, SeenDevice]:
    return {i: SeenDevice(i, "Unhealthy", () if numa is None else (numa,)) for i in ids}


def rl(*pools: tuple[str, dict[str, object]]) -> str:
    """A resourceList config with default prefix intel.com."""
    return json.dumps({"resourceList": [{"resourceName": n, "selectors": sel} for n, sel in pools]})


def wait_until(pred: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """Poll `pred` until it returns something truthy (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> tuple[int, str]:
    """Status and body; an HTTP error status is returned, not raised."""
    try:
        with _NO_PROXY.open(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition, by name and exact labels."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == want:
            return float(value)
    return None


def inode(path: str | Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class Watch:
    """A second ListAndWatch client on a plugin socket that keeps every list it receives."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = str(socket_path)
        self.channel = grpc.insecure_channel("unix:" + self.socket_path)
        grpc.channel_ready_future(self.channel).result(timeout=WAIT)
        self.call = dp_grpc.DevicePluginStub(self.channel).ListAndWatch(dp_pb.Empty())
        self.lists: list[dict[str, str]] = []  # device ID -> health, per list
        self.end_code: grpc.StatusCode | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="test-law", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        code = grpc.StatusCode.OK
        try:
            for resp in self.call:
                with self._cond:
                    self.lists.append({d.ID: d.health for d in resp.devices})
                    self._cond.notify_all()
        except grpc.RpcError as e:
            code = e.code()
        with self._cond:
            self.end_code = code
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self.end_code is not None

    def wait_list(self, pred: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        """The first list received so far, or later, that satisfies `pred` (bounded)."""

        def found() -> dict[str, str] | None:
            return next((lst for lst in self.lists if pred(lst)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None or self.end_code, WAIT):
                raise TimeoutError(f"{what}: no such list in {WAIT}s; last {self.lists[-1:]}")
            hit = found()
            if hit is None:
                raise AssertionError(f"{what}: stream ended ({self.end_code}) first")
            return hit

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()
        self._thread.join(WAIT)


class Daemon:
    """`python -m deviceplugin.cli ...` as a user runs it; stderr kept in a file."""

    def __init__(self, node: Node, args: list[str]) -> None:
        self.node = node
        self.args = args
        n = len(node.daemons)
        self.stderr_path = node.root / f"daemon{n}.err"
        self.stdout_path = node.root / f"daemon{n}.out"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deviceplugin.cli", *args],
                stdout=out,
                stderr=err,
                cwd=ROOT,
                start_new_session=True,  # our signals only, never the terminal's
            )

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = WAIT) -> str:
        def seen() -> str | None:
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            return self.log() if text in self.log() else None

        return wait_until(seen, f"log line {text!r}", timeout)

    def wait_serving(self) -> None:
        """Until the daemon is past start-up (pools served, first registration tried, /metrics
        listening): its "serving N pools" line, not a server's "serving <resource> on ..."."""
        self.wait_log("sriov-device-plugin: serving ")

    def signal(self, sig: int) -> None:
        assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log()}"
        self.proc.send_signal(sig)

    def hup(self) -> None:
        self.signal(signal.SIGHUP)

    def term(self) -> int:
        """SIGTERM and wait (bounded) for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


class Node:
    """One fake node under a short temporary folder (socket paths must stay under 108 bytes).

    Layout: sys/ (the sample host), kubelet/ (device-plugins), registry/ (plugins_registry, only
    made on request), devinfo/, dev/ (with /dev/vfio nodes for every IOMMU group), podres/.
    """

    def __init__(self, host_spec: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dpe-", dir="/tmp"))
        self.host: BuiltHost = build_host(load_spec(host_spec), str(self.root / "sys"))
        self.sysfs: FakeSysfs = self.host.sysfs
        self.sysfs_root = self.root / "sys"
        self.kubelet_dir = self.root / "kubelet"
        self.kubelet_dir.mkdir()
        self.registry_dir = self.root / "registry"  # absent unless a test makes it
        self.devinfo_dir = self.root / "devinfo"
        self.dev_root = self.root / "dev"
        self.podres_socket = self.root / "podres" / "kubelet.sock"
        self.make_vfio_nodes()
        self.daemons: list[Daemon] = []
        self.kubelets: list[KubeletStandIn] = []
        self.podres: list[PodResourcesStandIn] = []
        self.watches: list[Watch] = []

    # -- host ------------------------------------------------------------------------------------
    def make_vfio_nodes(self) -> None:
        """/dev/vfio/vfio and /dev/vfio/<group> for every IOMMU group, as plain files."""
        vfio = self.dev_root / "vfio"
        vfio.mkdir(parents=True, exist_ok=True)
        (vfio / "vfio").touch()
        for group in os.listdir(self.sysfs_root / "kernel" / "iommu_groups"):
            (vfio / group).touch()

    def iommu_group(self, bdf: str) -> str:
        link = self.sysfs_root / "bus" / "pci" / "devices" / bdf / "iommu_group"
        return os.path.basename(os.readlink(link))

    # -- config ----------------------------------------------------------------------------------
    def write(self, name: str, text: str) -> Path:
        """Write a file under the node atomically (a reader sees the old or the new one)."""
        path = self.root / name
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def configmap(self, text: str, version: int = 1, name: str = "config.json") -> Path:
        """A ConfigMap volume: `<name> -> ..data/<name>`, `..data -> ..<version>`; a later call
        swaps `..data` atomically (os.replace of a symlink), as kubelet does."""
        cm = self.root / "cm"
        data_dir = cm / f"..v{version}"
        data_dir.mkdir(parents=True)
        (data_dir / name).write_text(text)
        tmp = cm / "..data_tmp"
        os.symlink(data_dir.name, tmp)
        os.replace(tmp, cm / "..data")
        link = cm / name
        if not os.path.lexists(link):
            os.symlink(f"..data/{name}", link)
        return link

    # -- processes -------------------------------------------------------------------------------
    def kubelet(self, start: bool = True) -> KubeletStandIn:
        k = KubeletStandIn(str(self.kubelet_dir))
        self.kubelets.append(k)
        if start:
            k.start()
        return k

    def pod_resources(self, kubelet: KubeletStandIn) -> PodResourcesStandIn:
        pr = PodResourcesStandIn(str(self.podres_socket), kubelet)
        self.podres.append(pr)
        return pr.start()

    def watch(self, socket_path: str | Path) -> Watch:
        w = Watch(socket_path)
        self.watches.append(w)
        return w

    def daemon_args(
        self, config: str | Path, *extra: str, resync: float = 60.0, metrics_port: int = 0
    ) -> list[str]:
        return [
            "--config-file",
            str(config),
            "--sysfs-root",
            str(self.sysfs_root),
            "--kubelet-dir",
            str(self.kubelet_dir),
            "--plugins-registry-dir",
            str(self.registry_dir),
            "--device-info-dir",
            str(self.devinfo_dir),
            "--pod-resources-socket",
            str(self.podres_socket),
            "--dev-root",
            str(self.dev_root),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--no-events",
            "--resync-period",
            str(resync),
            *extra,
        ]

    def daemon(
        self, config: str | Path, *extra: str, resync: float = 60.0, metrics_port: int = 0
    ) -> Daemon:
        d = Daemon(self, self.daemon_args(config, *extra, resync=resync, metrics_port=metrics_port))
        self.daemons.append(d)
        return d

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A short-lived `sriov-device-plugin` invocation (bounded)."""
        return subprocess.run(
            [sys.executable, "-m", "deviceplugin.cli", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=WAIT * 2,
        )

    def plugin_sockets(self) -> set[str]:
        return {p for p in os.listdir(self.kubelet_dir) if p.startswith("sriov-nsm-")}

    def close(self) -> None:
        errors: list[str] = []
        for d in self.daemons:
            try:
                d.term()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                d.kill()
        for w in self.watches:
            w.close()
        for pr in self.podres:
            pr.stop()
        for k in self.kubelets:
            k.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))


def wait_registered(
    kubelet: KubeletStandIn, resources: set[str], timeout: float = WAIT
) -> dict[str, dict[str, SeenDevice]]:
    """Until exactly `resources` are connected and each has sent a list; returns the lists."""

    def ok() -> bool:
        if set(kubelet.resources()) != resources:
            return False
        return all(kubelet.updates(r) > 0 for r in resources)

    try:
        wait_until(ok, f"registration of {sorted(resources)}", timeout)
    except TimeoutError:
        raise TimeoutError(
            f"connected {kubelet.resources()}, wanted {sorted(resources)}; "
            f"attempts {kubelet.attempts}"
        ) from None
    return {r: dict(kubelet.devices(r)) for r in resources}
