"""The real components on a lab, as they would run on a node: their configs, their processes.

Order (each waits for the one before it to serve):

    node           python -m lab.node: the kubelet (device-plugin registration, pod-resources),
                   container runtime (CRI) and API server stand-ins, and the lab's pod netns
    registry       nsm-registry serve (SQLite)
    torshim        torshim serve: the lab TOR's driver, one access port per VF, registers its
                   services in the registry
    device-plugin  sriov-device-plugin over the lab's fake sysfs, registered with the stand-in
    nsmgr          nsmgr serve with the pod integration, the VFs' side in the node netns

Every file is in the lab's state dir and every command line names it, so `build.destroy` finds
and kills what is left (it only kills recorded pids whose command line holds the state dir).
`components.json` keeps each command line, so `nsm-lab kill` can start a component again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import yaml

from lab import build
from lab.scenario import Scenario
from lab.topology import Lab

ORDER = ("node", "registry", "torshim", "device-plugin", "nsmgr")
DOMAIN = "example.com"  # the lab's service domain: resources are example.com/<capability>
READY_TIMEOUT = 20.0


class ComponentError(build.LabError):
    """A component did not start or did not become ready; one line, with its log's tail."""


@dataclass(frozen=True)
class Paths:
    """Where each component's sockets and files are, under the state dir."""

    sd: str

    def p(self, *parts: str) -> str:
        return os.path.join(self.sd, *parts)

    @property
    def registry_sock(self) -> str:
        return self.p("registry.sock")

    @property
    def torshim_sock(self) -> str:
        return self.p("torshim.sock")

    @property
    def nsm_sock(self) -> str:
        return self.p("nsm.sock")

    @property
    def kubelet_dir(self) -> str:
        return self.p("kubelet", "device-plugins")

    @property
    def plugins_registry(self) -> str:
        return self.p("kubelet", "plugins_registry")

    @property
    def pod_resources_sock(self) -> str:
        return self.p("kubelet", "pod-resources", "kubelet.sock")

    @property
    def cri_sock(self) -> str:
        return self.p("cri.sock")

    @property
    def node_json(self) -> str:
        return self.p("node.json")

    @property
    def kubeconfig(self) -> str:
        return self.p("kubeconfig")

    @property
    def components_json(self) -> str:
        return self.p("components.json")

    def log(self, name: str) -> str:
        return self.p("logs", f"{name}.log")


def capability(speed_mbps: int) -> str:
    """A PF's capability name from its speed: 100000 -> 100g."""
    return f"{speed_mbps // 1000}g" if speed_mbps >= 1000 else f"{speed_mbps}m"


# -- configs ------------------------------------------------------------------------------------


def torshim_config(lab: Lab, scenario: Scenario, switch: dict[str, Any]) -> dict[str, Any]:
    """The shim's config: the switch `up` wrote, a port of its own for each VF (the lab's VFs are
    veths cabled one to one), the scenario's services, and the registry."""
    paths = Paths(lab.state_dir)
    return {
        "server": {
            "name": f"torshim-{lab.prefix}",
            "listen": f"unix://{paths.torshim_sock}",
            "metrics": "",
            "request_timeout": 15,
            "reconcile_interval": 30,
            "connection_ttl": 600,
        },
        "registry": {
            "url": f"unix://{paths.registry_sock}",
            "advertise": f"unix://{paths.torshim_sock}",
            "ttl": 30,
        },
        "switches": [switch],
        "port_map": [
            {
                "node": lab.node_name,
                "pf": pf.ifname,
                "vf": vf.pci_address,
                "switch": switch["name"],
                "port": vf.tor_port,
            }
            for pf in lab.pfs
            for vf in pf.vfs
        ],
        "services": [s.torshim() for s in scenario.services],
        "guard_rails": {
            "allowed_vlans": "2-4094",
            "protected_ports": {switch["name"]: [lab.mgmt_tor_if]},
        },
        "store": {"path": paths.p("torshim.db")},
    }


def device_plugin_config(lab: Lab) -> dict[str, Any]:
    """One pool per PF capability in the lab's domain: example.com/100g, example.com/10g."""
    return {
        "nsm": {
            "pfs": [
                {
                    "pf": pf.ifname,
                    "capabilities": [capability(pf.speed_mbps)],
                    "serviceDomains": [DOMAIN],
                }
                for pf in lab.pfs
            ]
        }
    }


def nsmgr_config(lab: Lab) -> dict[str, Any]:
    paths = Paths(lab.state_dir)
    return {
        "node_name": lab.node_name,
        "state_dir": paths.p("nsmgr"),
        "socket": paths.nsm_sock,
        "sysfs_root": lab.sysfs,
        "node_netns": f"/run/netns/{lab.node_ns}",
        "pf_side": "none",  # a veth has no VF settings on its "PF"; the VLAN is the TOR port's
        "metrics": {"port": 0},
        "reconcile_period": 5,
        "services": [],
        "registry": {"url": f"unix://{paths.registry_sock}", "timeout": 10},
        "pods": {
            "node_name": lab.node_name,
            "podresources_socket": paths.pod_resources_sock,
            "cri_socket": f"unix://{paths.cri_sock}",
            "kubeconfig": paths.kubeconfig,
            "resource_prefixes": [f"{DOMAIN}/"],
            "resync_seconds": 10,
            "retry_initial_seconds": 0.1,
            "retry_max_seconds": 1,
            "rpc_timeout_seconds": 5,
        },
    }


def registry_config(lab: Lab) -> dict[str, Any]:
    paths = Paths(lab.state_dir)
    return {
        "domain": DOMAIN,
        "server": {"listen": f"unix://{paths.registry_sock}", "metrics": ""},
        "store": {"backend": "sqlite", "path": paths.p("registry.db")},
        "proxy": {"enabled": False},
    }


def _dump(path: str, data: dict[str, Any], what: str) -> str:
    text = f"# Written by nsm-lab: {what}.\n" + yaml.safe_dump(data, sort_keys=False)
    build._write(path, text, 0o600)
    return path


def write_configs(lab: Lab, scenario: Scenario) -> dict[str, list[str]]:
    """Every component's config file, checked by its own loader; returns each command line."""
    paths = Paths(lab.state_dir)
    os.makedirs(paths.p("logs"), exist_ok=True)
    with open(lab.torshim_config, encoding="utf-8") as f:
        switch = (yaml.safe_load(f) or {})["switches"][0]
    _dump(lab.torshim_config, torshim_config(lab, scenario, switch), "the TOR shim")
    _dump(paths.p("registry.yaml"), registry_config(lab), "the registry")
    _dump(paths.p("nsmgr.yaml"), nsmgr_config(lab), "nsmgr")
    _dump(paths.p("device-plugin.yaml"), device_plugin_config(lab), "the device plugin's pools")
    # Each loader checks its file now: a bad lab config is a lab bug, better found before start.
    from nsmgr.config import load_config as nsmgr_load
    from nsmgr.registry.config import load_config as registry_load
    from torshim.config import load_config as torshim_load

    torshim_load(lab.torshim_config)
    registry_load(paths.p("registry.yaml"))
    nsmgr_load(paths.p("nsmgr.yaml"))
    py = sys.executable
    return {
        "node": [py, "-m", "lab.node", "--state-dir", lab.state_dir, "--node", lab.node_name,
                 "--netns-prefix", lab.pod_ns_prefix],
        "registry": [py, "-m", "nsmgr.registry.cli", "serve", "--config",
                     paths.p("registry.yaml")],
        "torshim": [py, "-m", "torshim.cli", "serve", "--config", lab.torshim_config],
        "device-plugin": [
            py, "-m", "deviceplugin.cli", "--config-file", paths.p("device-plugin.yaml"),
            "--sysfs-root", lab.sysfs, "--kubelet-dir", paths.kubelet_dir,
            "--plugins-registry-dir", paths.plugins_registry,
            "--pod-resources-socket", paths.pod_resources_sock,
            "--device-info-dir", paths.p("devinfo"), "--metrics-port", "0", "--no-events",
            "--resync-period", "5",
        ],
        "nsmgr": [py, "-m", "nsmgr.cli", "serve", "--config", paths.p("nsmgr.yaml")],
    }  # fmt: skip


# -- processes ----------------------------------------------------------------------------------


def _load(paths: Paths) -> dict[str, Any]:
    try:
        with open(paths.components_json, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(paths: Paths, data: dict[str, Any]) -> None:
    tmp = paths.components_json + ".tmp"
    build._write(tmp, json.dumps(data, indent=1), 0o600)
    os.replace(tmp, paths.components_json)


def _record(lab: Lab, pid: int, name: str) -> None:
    """Into state.json, as `up` records sshd, so destroy kills it whatever happens to us."""
    st = build.State(lab)
    st.data = build.read_state(lab.state_dir) or st.data
    st.record("process", pid=pid, what=name)


def start(lab: Lab, name: str, argv: list[str] | None = None) -> int:
    """Start one component (its saved command line unless `argv`); returns its pid."""
    paths = Paths(lab.state_dir)
    data = _load(paths)
    argv = argv or data.get(name, {}).get("argv")
    if not argv:
        raise ComponentError(f"{name}: no command line saved; run the lab again")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NODE_NAME": lab.node_name}
    with open(paths.log(name), "ab") as out:
        offset = out.tell()  # this run's log starts here (a restart appends)
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=lab.state_dir,
            env=env,
            start_new_session=True,  # Ctrl-C on the terminal is the lab's to handle
        )
    _record(lab, proc.pid, name)
    data[name] = {
        "argv": argv,
        "pid": proc.pid,
        "log": paths.log(name),
        "log_offset": offset,
        "started": time.time(),
    }
    _save(paths, data)
    return proc.pid


def pid_of(lab: Lab, name: str) -> int | None:
    entry = _load(Paths(lab.state_dir)).get(name) or {}
    pid = entry.get("pid")
    if (
        isinstance(pid, int)
        and build.pid_alive(pid)
        and build.names_dir(build._cmdline(pid), lab.state_dir)
    ):
        return pid
    return None


def log_tail(lab: Lab, name: str, chars: int = 400) -> str:
    try:
        with open(Paths(lab.state_dir).log(name), errors="replace") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars * 4))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return " ".join(" | ".join(lines[-3:]).split())[-chars:]


def stop(lab: Lab, name: str, sig: str = "TERM") -> bool:
    """SIGTERM (then SIGKILL after 2 s) or straight SIGKILL; True if it was running."""
    pid = pid_of(lab, name)
    if pid is None:
        return False
    if sig == "KILL":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while build.pid_alive(pid) and time.monotonic() < deadline:
            build._reap(pid)
            time.sleep(0.01)
        return True
    build._kill_all([pid])
    return True


# -- readiness ----------------------------------------------------------------------------------


def _grpc_ready(target: str, timeout: float = 0.3) -> bool:
    with grpc.insecure_channel(target) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False


def _node_ready(lab: Lab) -> bool:
    """node.json written by this very process (a restarted node's old file does not count)."""
    try:
        with open(Paths(lab.state_dir).node_json, encoding="utf-8") as f:
            return json.load(f).get("pid") == pid_of(lab, "node")
    except (OSError, ValueError, AttributeError):
        return False


def _registry_ready(lab: Lab) -> bool:
    return _grpc_ready(f"unix://{Paths(lab.state_dir).registry_sock}")


def _torshim_ready(lab: Lab, services: tuple[str, ...]) -> bool:
    """Serving, and registered as the endpoint of every service (what nsmgr will Find)."""
    from nsmgr.registry.client import RegistryClient, RegistryError

    paths = Paths(lab.state_dir)
    if not _grpc_ready(f"unix://{paths.torshim_sock}"):
        return False
    try:
        with RegistryClient(f"unix://{paths.registry_sock}", timeout=1) as reg:
            return all(reg.find_endpoints(service=s) for s in services)
    except RegistryError:
        return False


def allocatable(lab: Lab) -> dict[str, int]:
    """Devices per resource the kubelet stand-in would hand out (pod-resources API)."""
    from sriov_nsm_wire.podresources.v1 import api_pb2 as pr
    from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc

    with grpc.insecure_channel(f"unix://{Paths(lab.state_dir).pod_resources_sock}") as ch:
        try:
            resp = pr_grpc.PodResourcesListerStub(ch).GetAllocatableResources(
                pr.AllocatableResourcesRequest(), timeout=1
            )
        except grpc.RpcError:
            return {}
    out: dict[str, int] = {}
    for d in resp.devices:
        out[d.resource_name] = out.get(d.resource_name, 0) + len(d.device_ids)
    return out


def _this_run_log(lab: Lab, name: str) -> str:
    entry = _load(Paths(lab.state_dir)).get(name) or {}
    try:
        with open(Paths(lab.state_dir).log(name), errors="replace") as f:
            f.seek(int(entry.get("log_offset", 0)))
            return f.read()
    except (OSError, ValueError):
        return ""


def _device_plugin_ready(lab: Lab) -> bool:
    """This very process registered every pool (kubelet still lists a killed plugin's devices
    until it notices, so the device list alone would pass at once), and kubelet lists them."""
    want: dict[str, int] = {}
    for pf in lab.pfs:  # every VF listed, not just the pool: a pod admitted early sees them all
        res = f"{DOMAIN}/{capability(pf.speed_mbps)}"
        want[res] = want.get(res, 0) + len(pf.vfs)
    log = _this_run_log(lab, "device-plugin")
    if not all(f"registered {r} with kubelet" in log for r in want):
        return False
    have = allocatable(lab)
    return all(have.get(r, 0) >= n for r, n in want.items())


def _nsmgr_ready(lab: Lab) -> bool:
    return _grpc_ready(f"unix://{Paths(lab.state_dir).nsm_sock}")


def ready_check(lab: Lab, name: str, scenario: Scenario | None = None) -> Callable[[], bool]:
    services = tuple(s.name for s in scenario.services) if scenario else ()
    return {
        "node": lambda: _node_ready(lab),
        "registry": lambda: _registry_ready(lab),
        "torshim": lambda: _torshim_ready(lab, services),
        "device-plugin": lambda: _device_plugin_ready(lab),
        "nsmgr": lambda: _nsmgr_ready(lab),
    }[name]


def wait_ready(
    lab: Lab, name: str, scenario: Scenario | None = None, timeout: float = READY_TIMEOUT
) -> float:
    """Seconds until `name` is ready; ComponentError (with its log) if it dies or times out."""
    start = time.monotonic()
    check = ready_check(lab, name, scenario)
    while True:
        if pid_of(lab, name) is None:
            raise ComponentError(f"{name} exited: {log_tail(lab, name) or 'no output'}")
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ComponentError(
                f"{name} not ready after {timeout:.0f} s: {log_tail(lab, name) or 'no output'}"
            )
        time.sleep(0.02)


def start_all(
    lab: Lab, scenario: Scenario, progress: build.Progress = build._quiet
) -> dict[str, float]:
    """Write the configs, start every component in order; seconds each took to be ready."""
    argvs = write_configs(lab, scenario)
    took: dict[str, float] = {}
    for name in ORDER:
        progress(f"starting {name}")
        t0 = time.monotonic()
        start(lab, name, argvs[name])
        wait_ready(lab, name, scenario)
        took[name] = round(time.monotonic() - t0, 3)
    return took


def stop_all(lab: Lab) -> list[str]:
    """Stop every component, the last started first; returns the names that were running."""
    stopped = []
    for name in reversed(ORDER):
        if stop(lab, name):
            stopped.append(name)
    return stopped


def load_lab(prefix: str, root: str | None = None) -> Lab:
    """The lab `up` built under `prefix`; LabError when there is none."""
    from lab.topology import lab_from_dict, names_for

    names = names_for(prefix, root)
    state = build.read_state(names.state_dir) or {}
    if not state.get("complete") or not isinstance(state.get("lab"), dict):
        raise build.LabError(f"no lab {prefix} is up (nsm-lab up --prefix {prefix})")
    return lab_from_dict(state["lab"])


def remember_scenario(lab: Lab, path: str) -> None:
    """Which pods file `up` ran, for `status` and `kill` (run later, in other processes)."""
    paths = Paths(lab.state_dir)
    data = _load(paths)
    data["scenario"] = os.path.abspath(path)
    _save(paths, data)


def scenario_path(lab: Lab) -> str | None:
    path = _load(Paths(lab.state_dir)).get("scenario")
    return path if isinstance(path, str) else None


def status(lab: Lab) -> list[dict[str, Any]]:
    data = _load(Paths(lab.state_dir))
    return [
        {"name": n, "pid": pid_of(lab, n), "running": pid_of(lab, n) is not None,
         "log": data.get(n, {}).get("log", "")}
        for n in ORDER
        if n in data
    ]  # fmt: skip
