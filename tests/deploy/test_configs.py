"""The ConfigMaps' configs pass each component's own loader, agree with the example configs in
configs/, and agree with the manifests: every path a config or flag names is mounted, every port it
listens on is the one the probes and Services use, and every command parses with the CLI's parser."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

from tests.deploy.manifests import (
    COMPONENTS,
    NAMESPACE,
    ROOT,
    command,
    config_map_data,
    console_scripts,
    container,
    covering_mount,
    find,
    flag,
    host_path_of,
    volume,
)

# The README's secret (README "Deploy": kubectl create secret generic ...) and its keys
SECRET_NAME = "torshim-switch-credentials"
SECRET_KEYS = {"tor-a.password", "tor-b.key", "known_hosts"}


def _config_path(component: str) -> str:
    args = command(component)
    return flag(args, "--config-file" if component == "sriov-device-plugin" else "--config")


def _write(tmp_path, component: str) -> str:
    """The component's config as its pod sees it, written to a file of the same name."""
    path = tmp_path / os.path.basename(_config_path(component))
    path.write_text(config_map_data(component, _config_path(component)))
    return str(path)


def _ports(component: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(component)["ports"]}


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- sriov-device-plugin --------------------------------------------------------------------------


def _pools(text: str, where: str) -> list[Any]:
    from deviceplugin.config import parse_config

    return parse_config(text, where)


def test_device_plugin_config_loads_and_matches_the_example():
    text = config_map_data("sriov-device-plugin", _config_path("sriov-device-plugin"))
    pools = _pools(text, "ConfigMap sriov-device-plugin-config")
    with open(os.path.join(ROOT, "configs", "sriov-device-plugin.yaml"), encoding="utf-8") as f:
        example = _pools(f.read(), "configs/sriov-device-plugin.yaml")
    assert pools == example
    port = int(flag(command("sriov-device-plugin"), "--metrics-port"))
    assert port == _ports("sriov-device-plugin")["metrics"]


# -- nsmgr ----------------------------------------------------------------------------------------


@pytest.fixture
def nsmgr_config(tmp_path, monkeypatch):
    from nsmgr.config import load_config
    from nsmgr.pods.config import PodsConfig

    monkeypatch.setenv("NODE_NAME", "node-a")  # the DaemonSet's downward API value
    cfg = load_config(_write(tmp_path, "nsmgr"))
    assert cfg.pods is not None, "the pod integration must be on in the cluster"
    pods = cfg.pods if isinstance(cfg.pods, PodsConfig) else PodsConfig.model_validate(cfg.pods)
    return cfg, pods


def test_nsmgr_config_loads_and_matches_the_example(nsmgr_config):
    from nsmgr.config import load_config

    cfg, pods = nsmgr_config
    example = load_config(os.path.join(ROOT, "configs", "nsmgr.yaml"))
    assert cfg.services == example.services
    assert cfg.metrics.port == _ports("nsmgr")["metrics"]
    assert cfg.metrics.address == "0.0.0.0"
    assert pods.node_name == "node-a"


def test_nsmgr_config_paths_are_mounted_from_the_host(nsmgr_config):
    cfg, pods = nsmgr_config
    for what, path in (
        ("state_dir", cfg.state_dir),
        ("socket", cfg.socket),
        ("pods.podresources_socket", pods.podresources_socket),
        ("pods.cri_socket", pods.cri_socket.removeprefix("unix://")),
    ):
        assert host_path_of("nsmgr", path) == path, f"{what} {path} is not the node's"
    assert host_path_of("nsmgr", pods.proc_root) == "/proc"
    assert cfg.sysfs_root == "/sys"  # privileged: the runtime's /sys is the host's, writable


# -- torshim --------------------------------------------------------------------------------------


@pytest.fixture
def torshim_config(tmp_path, monkeypatch):
    """The shim's ConfigMap through its loader (which refuses inline secrets), with secret files
    checked against the Secret volume instead of the disk: each must be one of the Secret's keys,
    where it is mounted."""
    import torshim.config as tc

    mount, vol = covering_mount("torshim", "/etc/torshim/secrets/x") or (None, None)
    assert vol is not None and vol["secret"]["secretName"] == SECRET_NAME
    provided = {f"{mount['mountPath'].rstrip('/')}/{k}" for k in SECRET_KEYS}
    read: list[str] = []

    def read_secret(path: str) -> str:
        assert path in provided, f"{path}: not a key of Secret {SECRET_NAME} where it is mounted"
        read.append(path)
        return "secret"

    monkeypatch.setattr(tc, "read_secret", read_secret)
    cfg = tc.load_config(_write(tmp_path, "torshim"))
    return cfg, read


def test_torshim_config_loads_with_the_secrets_mounted(torshim_config):
    cfg, read = torshim_config
    assert read, "no secret file named"
    for sw in cfg.switches:
        if sw.host_key_checking:  # the image's user has no ~/.ssh: known_hosts must be given
            assert sw.known_hosts in read, sw.name
    assert volume("torshim", "switch-credentials")["secret"].get("optional") is not True


def test_torshim_config_matches_the_example(torshim_config, monkeypatch):
    import torshim.config as tc

    cfg, _ = torshim_config
    monkeypatch.setattr(tc, "read_secret", lambda path: "secret")  # configs/secrets/ is not there
    example = tc.load_config(os.path.join(ROOT, "configs", "torshim.yaml"))
    assert cfg.services == example.services
    assert cfg.port_map == example.port_map
    assert cfg.guard_rails == example.guard_rails
    files = {"password_file", "key_file", "known_hosts"}
    assert [sw.model_dump(exclude=files) for sw in cfg.switches] == [
        sw.model_dump(exclude=files) for sw in example.switches
    ]


def test_torshim_config_agrees_with_the_deployment(torshim_config):
    cfg, _ = torshim_config
    ports = _ports("torshim")
    assert _port_of(cfg.server.listen) == ports["grpc"]
    assert _port_of(cfg.server.metrics) == ports["metrics"]
    assert cfg.server.metrics.startswith("0.0.0.0:")  # kubelet probes the pod's address
    store_dir = os.path.dirname(cfg.store.path)
    mount, vol = covering_mount("torshim", cfg.store.path)
    assert "persistentVolumeClaim" in vol and mount["mountPath"] == store_dir
    # the registry it registers in is the Service nsm-registry
    host, port = cfg.registry.url.removeprefix("tcp://").rsplit(":", 1)
    svc = find("Service", "nsm-registry")
    assert host in (f"nsm-registry.{NAMESPACE}.svc", f"nsm-registry.{NAMESPACE}.svc.cluster.local")
    assert int(port) == svc["spec"]["ports"][0]["port"]
    # the leader advertises its own address, on the gRPC port
    advertise = flag(command("torshim"), "--advertise")
    assert advertise == f"tcp://10.244.1.7:{ports['grpc']}"


# -- nsm-registry ---------------------------------------------------------------------------------


def test_registry_config_loads_and_agrees_with_its_manifests(tmp_path):
    from nsmgr.registry.config import load_config

    cfg = load_config(_write(tmp_path, "nsm-registry"))
    assert cfg.store.backend == "kubernetes"
    assert cfg.store.kubernetes.namespace == NAMESPACE  # where its Role grants its resources
    assert cfg.store.kubernetes.kubeconfig is None  # the in-cluster service account
    ports = _ports("nsm-registry")
    assert _port_of(cfg.server.listen) == ports["grpc"]
    assert _port_of(cfg.server.metrics) == ports["metrics"]
    assert cfg.server.metrics.startswith("0.0.0.0:")
    # the example pod's service lives in this registry's domain
    assert cfg.domain == "example.com"


# -- the commands ---------------------------------------------------------------------------------


def _parser(component: str):
    script = command(component)[0]
    target = console_scripts()[script]
    module = target.split(":")[0]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            pytest.skip(f"{script}: {module} is not written yet")
        raise
    return mod.build_parser()


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_command_is_a_console_script_and_parses(component):
    args = command(component)
    assert args[0] == COMPONENTS[component][1] and args[0] in console_scripts()
    parser = _parser(component)
    ns = parser.parse_args(args[1:])
    assert getattr(ns, "command", None) in (None, "serve")  # the daemon, not a one-shot command


def test_the_example_pods_request_is_served(nsmgr_config, torshim_config, tmp_path):
    """What the example pod asks for exists: example.com/100g is a device plugin pool;
    myns.example.com is a service of nsmgr and of the shim, in the registry's domain, open to the
    pod's namespace."""
    from deviceplugin.config import parse_config
    from nsmgr.model import ServiceRef
    from nsmgr.registry.config import load_config as registry_config
    from tests.deploy import kustomize
    from tests.deploy.manifests import DEPLOY

    (pod,) = kustomize.load_yaml_docs(os.path.join(DEPLOY, "examples", "cnf-pod.yaml"))
    namespace = pod["metadata"]["namespace"]
    wanted = ServiceRef.parse(pod["metadata"]["annotations"]["ns.networkservicemesh.io"])
    (resource,) = pod["spec"]["containers"][0]["resources"]["limits"]
    pools = parse_config(
        config_map_data("sriov-device-plugin", _config_path("sriov-device-plugin")), "dp"
    )
    assert resource in {p.resource_name for p in pools}
    nsmgr_cfg, _ = nsmgr_config
    (local,) = [s for s in nsmgr_cfg.services if s.answers(wanted)]
    assert local.allows(namespace)
    shim_cfg, _ = torshim_config
    shim = shim_cfg.service(wanted.name)
    assert namespace in shim.namespaces or "*" in shim.namespaces
    registry = registry_config(_write(tmp_path, "nsm-registry"))
    assert shim.domain == registry.domain == resource.split("/")[0]
