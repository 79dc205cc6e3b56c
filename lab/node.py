"""The lab node's stand-in for kubelet, the container runtime and the API server, in one process.

    python -m lab.node --state-dir SD --node NODE --netns-prefix PFX [--grace SECONDS]

What cannot run in the lab (kubelet, containerd, kube-apiserver) is played by the stand-ins the
real components talk to over their real APIs:

    SD/kubelet/device-plugins/kubelet.sock   device-plugin Registration (lab.kubelet)
    SD/kubelet/plugins_registry/             kubelet's plugin watcher, scanned twice a second
    SD/kubelet/pod-resources/kubelet.sock    pod-resources v1 (List, Get, GetAllocatableResources)
    SD/cri.sock                              CRI RuntimeService (lab.cri)
    http://127.0.0.1:PORT                    the pods API (lab.apiserver); SD/kubeconfig names it

so `sriov-device-plugin --kubelet-dir SD/kubelet/device-plugins --plugins-registry-dir
SD/kubelet/plugins_registry --pod-resources-socket SD/kubelet/pod-resources/kubelet.sock` and
nsmgr (with --kubeconfig SD/kubeconfig and the CRI and pod-resources sockets) run unchanged.

The kubelet part follows the API's pods of NODE:

- a new pod is admitted as kubelet does: for each container, each extended-resource limit is a
  number of devices (more than the node has: phase Failed, reason OutOf<resource>; the device
  plugin failing: UnexpectedAdmissionError), taken with GetPreferredAllocation + Allocate. Then
  its netns `PFX<namespace>.<name>` is made (lo up), its sandbox registered with the CRI
  (netns /run/netns/<that name>) and its phase set to Running.
- a pod being deleted (deletionTimestamp set, or removed from the API outright) is torn down once
  its netns holds no link but lo (nsmgr has moved the VF back), or after --grace seconds: sandbox
  stopped and removed, netns deleted, devices released, pod removed from the API (DELETED). The
  wait matters because a lab VF is a veth: deleting a netns that holds it destroys the pair. So
  when the grace runs out with links left, the netns is kept (with a warning naming the links)
  and everything else goes on; `nsm-lab down` removes every PFX netns.

SD/node.json (written atomically once every server serves, removed on exit) says where
everything is. SIGTERM or SIGINT stops the servers and exits 0; the pods' netns are NOT deleted
on exit (the lab's teardown removes them), and the API's pods, kept in memory, go with the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from lab.apiclient import NODE_FILE
from lab.apiserver import ApiError, ApiServer, PodStore, now_rfc3339
from lab.cri import CriStandIn
from lab.kubelet import (
    KubeletStandIn,
    PluginWatcherStandIn,
    PodResourcesStandIn,
    StandInError,
    is_extended_resource_name,
)

log = logging.getLogger("lab.node")

DEFAULT_GRACE = 10.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL
PLUGIN_SOCKET_ROOM = 60  # a device plugin's socket name in the device-plugins folder, at most
SCAN_INTERVAL = 0.5  # plugin watcher
SYNC_INTERVAL = 0.2  # the kubelet loop, between API changes (deleting pods' netns are polled)


class NodeSetupError(Exception):
    """The node cannot start (bad paths); one line for the user."""


# --- netns ---------------------------------------------------------------------------------------


def _ip(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/run/netns", name))


def netns_add(name: str) -> None:
    """A new netns with lo up; an existing one is kept (a leftover of an earlier node)."""
    if not netns_exists(name):
        r = _ip("netns", "add", name)
        if r.returncode != 0 and not netns_exists(name):
            raise OSError(f"ip netns add {name}: {r.stderr.strip()}")
    r = _ip("-n", name, "link", "set", "lo", "up")
    if r.returncode != 0:
        raise OSError(f"lo up in {name}: {r.stderr.strip()}")


def netns_links(name: str) -> list[str] | None:
    """Links in the netns other than lo; None when there is no such netns."""
    if not netns_exists(name):
        return None
    r = _ip("-j", "-n", name, "link", "show")
    if r.returncode != 0:
        return None if not netns_exists(name) else []
    try:
        links = json.loads(r.stdout or "[]")
    except ValueError:
        return []
    return [str(link.get("ifname")) for link in links if link.get("ifname") != "lo"]


def netns_delete(name: str) -> None:
    if netns_exists(name):
        r = _ip("netns", "delete", name)
        if r.returncode != 0 and netns_exists(name):
            raise OSError(f"ip netns delete {name}: {r.stderr.strip()}")


# --- the kubelet part ----------------------------------------------------------------------------


@dataclass
class _LocalPod:
    """What the kubelet part holds for one pod it admitted (or refused)."""

    uid: str
    namespace: str
    name: str
    netns: str = ""  # "" when it has none (refused)
    sandbox_id: str = ""
    deadline: float | None = None  # set once its teardown started


def _quantity(value: Any) -> int:
    """An extended resource's quantity: a whole number ("2", 2)."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{value!r} is not a whole number of devices")
    return int(text)


def device_requests(pod: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(container, resource, count) for every extended resource a container asks for, from its
    limits (requests where it has no limit, as for extended resources they must be equal)."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        asked = {**(res.get("requests") or {}), **(res.get("limits") or {})}
        for resource, value in asked.items():
            if is_extended_resource_name(resource):
                count = _quantity(value)
                if count:
                    out.append((str(c.get("name") or ""), resource, count))
    return out


class Kubelet:
    """Follows the store's pods of `node` (level-triggered: every change, and every
    SYNC_INTERVAL, each pod is compared with what the node holds)."""

    def __init__(
        self,
        node: str,
        store: PodStore,
        devices: KubeletStandIn,
        cri: CriStandIn,
        netns_prefix: str,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.node = node
        self.store = store
        self.devices = devices
        self.cri = cri
        self.prefix = netns_prefix
        self.grace = grace
        self.pods: dict[str, _LocalPod] = {}  # by uid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def netns_name(self, namespace: str, name: str) -> str:
        return f"{self.prefix}{namespace}.{name}"

    def _run(self) -> None:
        rv = -1
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # the loop must outlive one pod's trouble
                log.exception("kubelet: sync failed")
            rv = self.store.wait_change(rv, SYNC_INTERVAL)
            if self.store.closed:
                return

    def sync(self) -> None:
        items, _ = self.store.list(lambda p: (p.get("spec") or {}).get("nodeName") == self.node)
        present = set()
        for pod in items:
            meta = pod["metadata"]
            uid = meta["uid"]
            present.add(uid)
            local = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if local is None:  # deleted before it was admitted: nothing to undo
                    self.store.finalize(meta["namespace"], meta["name"], uid)
                    log.info("pod %s/%s: deleted before admission", meta["namespace"], meta["name"])
                else:
                    self._terminate(local)
            elif local is None:
                busy = any(
                    (p.namespace, p.name) == (meta["namespace"], meta["name"])
                    for p in self.pods.values()
                )
                if not busy:  # a pod of that name is still being torn down: admit it after
                    self._admit(pod)
        for uid in [u for u in self.pods if u not in present]:  # gone from the API (grace 0)
            self._terminate(self.pods[uid])

    # -- admission -----------------------------------------------------------------------------
    def _admit(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        key = f"{ns}/{name}"
        local = _LocalPod(uid, ns, name)
        self.pods[uid] = local
        try:
            requests = device_requests(pod)
        except ValueError as e:
            self._fail(local, "UnexpectedAdmissionError", f"Pod was rejected: {e}")
            return
        refused = self._fit(requests)
        if refused:
            self._fail(local, *refused)
            return
        try:
            for container, resource, count in requests:
                self.devices.admit(name, resource, count, namespace=ns, container=container)
        except StandInError as e:
            self.devices.release(name, ns)
            message = f"Allocate failed due to {e}, which is unexpected"
            self._fail(local, "UnexpectedAdmissionError", message)
            return
        held = {
            a.resource: list(a.device_ids)
            for a in self.devices.allocations()
            if (a.namespace, a.pod) == (ns, name)
        }
        netns = self.netns_name(ns, name)
        try:
            netns_add(netns)
        except (OSError, subprocess.SubprocessError) as e:
            self.devices.release(name, ns)
            self._fail(local, "CreatePodSandboxError", f"Failed to create pod sandbox: {e}")
            return
        local.netns = netns
        local.sandbox_id = self.cri.run_pod(uid, name, ns, netns=f"/run/netns/{netns}").id
        started = now_rfc3339()
        containers = (pod.get("spec") or {}).get("containers") or []
        status = {
            "phase": "Running",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [
                {
                    "name": c.get("name"),
                    "image": c.get("image") or "",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
                for c in containers
            ],
        }
        with contextlib.suppress(ApiError):  # removed meanwhile: the next sync tears it down
            self.store.update_status(ns, name, status, uid=uid)
        log.info("pod %s: Running, netns %s, devices %s", key, netns, held or "none")

    def _fit(self, requests: list[tuple[str, str, int]]) -> tuple[str, str] | None:
        """Kubelet's resource-fit admission: (reason, message) when the node has too few."""
        wanted: dict[str, int] = {}
        for _, resource, count in requests:
            wanted[resource] = wanted.get(resource, 0) + count
        known = self.devices.resources()
        held: dict[str, int] = {}
        for a in self.devices.allocations():
            held[a.resource] = held.get(a.resource, 0) + len(a.device_ids)
        for resource, count in sorted(wanted.items()):
            devices = self.devices.devices(resource) if resource in known else {}
            capacity = sum(1 for d in devices.values() if d.healthy)  # kubelet's allocatable
            used = held.get(resource, 0)
            if count > capacity - used:
                return (
                    f"OutOf{resource}",
                    f"Pod was rejected: Node didn't have enough resource: {resource}, "
                    f"requested: {count}, used: {used}, capacity: {capacity}",
                )
        return None

    def _fail(self, local: _LocalPod, reason: str, message: str) -> None:
        status = {"phase": "Failed", "reason": reason, "message": message}
        status["startTime"] = now_rfc3339()
        with contextlib.suppress(ApiError):
            self.store.update_status(local.namespace, local.name, status, uid=local.uid)
        log.warning("pod %s/%s: Failed: %s: %s", local.namespace, local.name, reason, message)

    # -- teardown ------------------------------------------------------------------------------
    def _terminate(self, local: _LocalPod) -> None:
        key = f"{local.namespace}/{local.name}"
        if local.deadline is None:
            local.deadline = time.monotonic() + self.grace
            if local.netns:
                log.info("pod %s: deleting; waiting for its netns to hold only lo", key)
        links = netns_links(local.netns) if local.netns else None
        if links and time.monotonic() < local.deadline:
            return
        if local.sandbox_id:
            self.cri.stop_pod(local.sandbox_id)
            self.cri.remove_pod(local.sandbox_id)
        if links:
            log.warning(
                "pod %s: netns %s still holds %s after %.0fs; keeping the netns",
                key,
                local.netns,
                ", ".join(links),
                self.grace,
            )
        elif local.netns:
            try:
                netns_delete(local.netns)
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("pod %s: %s", key, e)
        freed = self.devices.release(local.name, local.namespace)
        self.store.finalize(local.namespace, local.name, local.uid)
        del self.pods[local.uid]
        log.info("pod %s: deleted (%d device allocations released)", key, freed)


# --- the node ------------------------------------------------------------------------------------


class Node:
    """Every stand-in of one lab node; `start()` serves them all and writes node.json."""

    def __init__(
        self, state_dir: str, node: str, netns_prefix: str, grace: float = DEFAULT_GRACE
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.node = node
        kubelet_root = os.path.join(self.state_dir, "kubelet")
        self.plugin_dir = os.path.join(kubelet_root, "device-plugins")
        self.registry_dir = os.path.join(kubelet_root, "plugins_registry")
        self.pod_resources_socket = os.path.join(kubelet_root, "pod-resources", "kubelet.sock")
        self.cri_socket = os.path.join(self.state_dir, "cri.sock")
        self.kubeconfig = os.path.join(self.state_dir, "kubeconfig")
        self.node_file = os.path.join(self.state_dir, NODE_FILE)
        self._check_paths()
        self.devices = KubeletStandIn(self.plugin_dir, duplicates="accept")
        self.watcher = PluginWatcherStandIn(self.registry_dir, self.devices)
        self.pod_resources = PodResourcesStandIn(self.pod_resources_socket, self.devices)
        self.cri = CriStandIn(self.cri_socket, record_calls=False)
        self.api = ApiServer()
        self.kubelet = Kubelet(node, self.api.store, self.devices, self.cri, netns_prefix, grace)
        self._stop = threading.Event()
        self._scanner: threading.Thread | None = None

    def _check_paths(self) -> None:
        longest = max(
            len(os.path.join(self.plugin_dir, "x" * PLUGIN_SOCKET_ROOM)),
            len(self.pod_resources_socket),
            len(self.cri_socket),
        )
        if longest > MAX_SOCKET_PATH:
            raise NodeSetupError(
                f"state dir {self.state_dir} is too long for unix socket paths "
                f"({longest} > {MAX_SOCKET_PATH} bytes); use a shorter one"
            )

    @property
    def kubelet_socket(self) -> str:
        return self.devices.socket_path

    def start(self) -> dict[str, Any]:
        for d in (self.plugin_dir, self.registry_dir, os.path.dirname(self.pod_resources_socket)):
            os.makedirs(d, exist_ok=True)
        _remove(self.node_file)  # an earlier node's: not ours to report
        self.devices.start()
        self.pod_resources.start()
        self.cri.start()
        self.api.start()
        self.api.write_kubeconfig(self.kubeconfig)
        self._scanner = threading.Thread(target=self._scan, name="plugin-watcher", daemon=True)
        self._scanner.start()
        self.kubelet.start()
        info = {
            "pid": os.getpid(),
            "node": self.node,
            "api": self.api.url,
            "kubeconfig": self.kubeconfig,
            "kubelet_socket": self.kubelet_socket,
            "pod_resources_socket": self.pod_resources_socket,
            "cri_socket": self.cri_socket,
            "plugins_registry_dir": self.registry_dir,
        }
        tmp = f"{self.node_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.node_file)
        log.info("node %s ready: api %s, state %s", self.node, self.api.url, self.state_dir)
        return info

    def _scan(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL):
            try:
                for r in self.watcher.scan():
                    if r.registered:
                        log.info("plugin watcher: %s registered (%s)", r.name, r.socket_path)
                    else:
                        log.warning("plugin watcher: %s refused: %s", r.socket_path, r.error)
            except OSError as e:  # a socket vanished mid-scan: the next scan sees the truth
                log.debug("plugin watcher scan: %s", e)

    def stop(self) -> None:
        self._stop.set()
        self.kubelet.stop()
        if self._scanner is not None:
            self._scanner.join(5.0)
        self.api.stop()
        self.cri.stop()
        self.pod_resources.stop()
        self.devices.stop()
        for path in (self.kubelet_socket, self.pod_resources_socket, self.node_file):
            _remove(path)  # node.json too: whoever reads it next must not find a dead node
        log.info("node %s stopped (pod netns are left for the lab's teardown)", self.node)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.node",
        description="The lab node's kubelet, container runtime and API server stand-ins.",
    )
    p.add_argument("--state-dir", required=True, help="sockets, kubeconfig and node.json go here")
    p.add_argument("--node", required=True, help="the node's name (pods with spec.nodeName)")
    p.add_argument("--netns-prefix", required=True, help="pod netns are <prefix><ns>.<name>")
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help=f"seconds a deleted pod's netns may keep links before teardown (default {DEFAULT_GRACE:g})",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    # handlers first: a SIGTERM during start-up must still stop the servers and exit 0
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        node = Node(args.state_dir, args.node, args.netns_prefix, args.grace)
    except NodeSetupError as e:
        print(f"lab.node: error: {e}", file=sys.stderr)
        return 2
    try:
        node.start()
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
