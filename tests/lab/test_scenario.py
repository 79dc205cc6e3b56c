"""The demo's scenario file and the component configs derived from a lab: data only."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from deviceplugin.config import parse_config as dp_parse
from lab import components
from lab.scenario import (
    DEFAULT_SERVICES,
    ScenarioError,
    expected_reachable,
    load_scenario,
    parse_scenario,
)
from lab.topology import DEFAULT_SPEC, build_topology
from nsmgr.config import parse_config as nsmgr_parse
from nsmgr.registry.config import parse_config as registry_parse
from torshim.config import ShimConfig

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  annotations: {{ns.networkservicemesh.io: {svc}}}
spec:
  containers:
  - name: app
    resources: {{limits: {{example.com/100g: 1, cpu: 100m}}}}
"""


def pod(name: str = "a", ns: str = "default", svc: str = "myns.example.com") -> str:
    return POD.format(name=name, ns=ns, svc=svc)


def test_the_default_scenario_has_two_services_and_pods_on_each() -> None:
    scn = load_scenario()
    assert [(s.name, s.vlan) for s in scn.services] == [
        ("myns.example.com", 100),
        ("other.example.com", 200),
    ]
    by_service: dict[str, int] = {}
    for p in scn.pods:
        for svc, ifname in p.services:
            by_service[svc] = by_service.get(svc, 0) + 1
            assert ifname == "nsm0"
    assert by_service == {"myns.example.com": 2, "other.example.com": 2}
    # both capabilities of the lab's node are asked for
    assert {r for p in scn.pods for r in p.resources} == {"example.com/100g", "example.com/10g"}


def test_pods_read_like_pod_specs_and_without_services_the_defaults_apply() -> None:
    scn = parse_scenario(pod("a") + "---\n" + pod("b", "other", "other.example.com"))
    assert scn.services == DEFAULT_SERVICES
    a, b = scn.pods
    assert (a.key, a.services, a.resources) == (
        "default/a",
        (("myns.example.com", "nsm0"),),
        {"example.com/100g": 1},  # cpu is not an extended resource
    )
    assert a.manifest["kind"] == "Pod" and a.manifest["metadata"]["namespace"] == "default"
    assert not expected_reachable(a, b, "other.example.com")
    assert not expected_reachable(a, a, "myns.example.com")


def test_nsm_url_annotations_name_the_interface() -> None:
    text = pod().replace(
        "{ns.networkservicemesh.io: myns.example.com}",
        "{networkservicemesh.io: 'kernel://myns.example.com/data0'}",
    )
    assert parse_scenario(text).pods[0].services == (("myns.example.com", "data0"),)


def test_same_service_pods_expect_to_reach_each_other() -> None:
    scn = parse_scenario(pod("a") + "---\n" + pod("b"))
    a, b = scn.pods
    assert expected_reachable(a, b, "myns.example.com")
    assert expected_reachable(b, a, "myns.example.com")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no Pod"),
        ("kind: Deployment\nmetadata: {name: x}\n", "kind 'Deployment'"),
        (pod("A"), "metadata.name 'A' is not a DNS label"),
        (pod(svc="nope.example.com"), "no service 'nope.example.com'"),
        (pod() + "---\n" + pod(), "pod default/a appears twice"),
        (pod().replace("example.com/100g: 1, ", ""), "no extended resource"),
        (pod().replace("example.com/100g: 1", "example.com/100g: 0"), "a count >= 1"),
        (pod().replace("ns.networkservicemesh.io", "foo"), "needs ns.networkservicemesh.io"),
        (pod().replace("myns.example.com}", "'memif://x'}").replace("ns.network", "network"),
         "memif"),
        ("a: [b", "not valid YAML"),
        (
            "kind: NetworkService\nmetadata: {name: s.example.com}\nspec: {vlan: 1, subnet: 10.60.0.0/24}\n",
            "spec.vlan",
        ),
        (
            "kind: NetworkService\nmetadata: {name: s.example.com}\nspec: {vlan: 5, subnet: 10.1.0.0/24}\n",
            "inside the lab's 10.60.0.0/16",
        ),
        (
            "kind: NetworkService\nmetadata: {name: s.example.com}\n"
            "spec: {vlan: 5, subnet: 10.60.0.0/24, colour: red}\n",
            "spec.colour: unknown field",
        ),
    ],
)  # fmt: skip
def test_bad_scenarios_are_one_clear_line(text: str, error: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(text, "pods.yaml")
    msg = str(exc.value)
    assert error in msg and "\n" not in msg and msg.startswith("pods.yaml")


def test_services_must_not_share_a_vlan_or_overlap() -> None:
    svc = "---\nkind: NetworkService\nmetadata: {{name: {n}}}\nspec: {{vlan: {v}, subnet: {s}}}\n"
    base = pod(svc="a.example.com")
    with pytest.raises(ScenarioError, match="share a name or VLAN"):
        parse_scenario(
            base
            + svc.format(n="a.example.com", v=5, s="10.60.1.0/24")
            + svc.format(n="b.example.com", v=5, s="10.60.2.0/24")
        )
    with pytest.raises(ScenarioError, match="overlap"):
        parse_scenario(
            base
            + svc.format(n="a.example.com", v=5, s="10.60.0.0/22")
            + svc.format(n="b.example.com", v=6, s="10.60.2.0/24")
        )


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="No such file"):
        load_scenario(str(tmp_path / "nope.yaml"))


def test_component_configs_pass_their_own_loaders(tmp_path: Path) -> None:
    lab = build_topology(yaml.safe_load(DEFAULT_SPEC), "cfgtest", str(tmp_path))
    scn = load_scenario()
    switch = {"name": lab.tor_name, "driver": "linux", "host": "172.31.0.2",
              "username": lab.tor_user, "key_file": str(tmp_path / "key"),
              "known_hosts": str(tmp_path / "kh")}  # fmt: skip
    (tmp_path / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "kh").write_text("172.31.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n")
    shim = ShimConfig.model_validate(components.torshim_config(lab, scn, switch))
    # each VF has its own TOR port (the veth peer), used untagged
    for vf in lab.vfs:
        assert shim.vf_port(lab.node_name, vf.pci_address) == (lab.tor_name, vf.tor_port)
    assert shim.is_protected(lab.tor_name, "mgmt0")
    for s in shim.services:  # on-link lab supernet: only VLANs keep services apart
        assert [str(r.prefix) for r in s.routes] == ["10.60.0.0/16"]
        assert s.routes[0].next_hop is None
        assert ipaddress.ip_network(str(s.subnet)).subnet_of(ipaddress.ip_network("10.60.0.0/16"))
    cfg = nsmgr_parse(components.nsmgr_config(lab))
    assert cfg.node_netns == f"/run/netns/{lab.node_ns}" and cfg.pf_side == "none"
    assert (
        cfg.pods is not None and cfg.pods.kubeconfig == components.Paths(lab.state_dir).kubeconfig
    )
    reg = registry_parse(components.registry_config(lab))
    assert reg.server.listen == f"unix://{components.Paths(lab.state_dir).registry_sock}"
    pools = dp_parse(yaml.safe_dump(components.device_plugin_config(lab)), "pools.yaml")
    assert sorted(f"{p.prefix}/{p.name}" for p in pools) == ["example.com/100g", "example.com/10g"]
