"""Pool config: both formats in JSON and YAML, an existing SR-IOV device plugin config, every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deviceplugin.config import (
    DEFAULT_PREFIX,
    PFRef,
    PoolSpec,
    Selector,
    load_config,
    parse_config,
    parse_vf_ranges,
)
from deviceplugin.types import ConfigError


def write(tmp_path: Path, text: str | bytes, name: str = "dp.yaml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


# -- an existing SR-IOV network device plugin ConfigMap, as its README documents it ----------------

UPSTREAM_JSON = """\
{
    "resourceList": [
        {
            "resourceName": "intel_sriov_netdevice",
            "resourcePrefix": "intel.com",
            "deviceType": "netDevice",
            "excludeTopology": true,
            "selectors": {
                "vendors": ["8086"],
                "devices": ["154c", "10ed", "1889"],
                "drivers": ["i40evf", "ixgbevf", "iavf"],
                "pfNames": ["ens1f0#0-3"],
                "rootDevices": ["0000:3b:00.1#0,2-3"],
                "linkTypes": ["ether"]
            }
        },
        {
            "resourceName": "intel_sriov_dpdk",
            "deviceType": "netDevice",
            "selectors": {
                "vendors": ["8086"],
                "devices": ["154c", "10ed", "1889"],
                "drivers": ["vfio-pci"],
                "needVhostNet": true
            }
        },
        {
            "resourceName": "mlnx_sriov_rdma",
            "resourcePrefix": "mellanox.com",
            "deviceType": "netDevice",
            "additionalInfo": {"*": {"token": "3e49019f-412f-4f02-824e-4cd195944205"}},
            "selectors": [
                {
                    "vendors": ["15b3"],
                    "devices": ["101e"],
                    "drivers": ["mlx5_core"],
                    "isRdma": true
                },
                {
                    "pciAddresses": ["0000:86:02.4", "0000:86:02.5"]
                }
            ]
        }
    ]
}
"""

UPSTREAM_YAML = """\
resourceList:
  - resourceName: intel_sriov_netdevice
    resourcePrefix: intel.com
    deviceType: netDevice
    excludeTopology: true
    selectors:
      vendors: ["8086"]
      devices: ["154c", "10ed", "1889"]
      drivers: [i40evf, ixgbevf, iavf]
      pfNames: ["ens1f0#0-3"]
      rootDevices: ["0000:3b:00.1#0,2-3"]
      linkTypes: [ether]
  - resourceName: intel_sriov_dpdk
    deviceType: netDevice
    selectors:
      vendors: ["8086"]
      devices: ["154c", "10ed", "1889"]
      drivers: [vfio-pci]
      needVhostNet: true
  - resourceName: mlnx_sriov_rdma
    resourcePrefix: mellanox.com
    deviceType: netDevice
    additionalInfo:
      "*": {token: 3e49019f-412f-4f02-824e-4cd195944205}
    selectors:
      - vendors: ["15b3"]
        devices: ["101e"]
        drivers: [mlx5_core]
        isRdma: true
      - pciAddresses: ["0000:86:02.4", "0000:86:02.5"]
"""

INTEL_IDS = frozenset({"154c", "10ed", "1889"})

UPSTREAM_POOLS = [
    PoolSpec(
        prefix="intel.com",
        name="intel_sriov_netdevice",
        selectors=(
            Selector(
                vendors=frozenset({"8086"}),
                devices=INTEL_IDS,
                drivers=frozenset({"i40evf", "ixgbevf", "iavf"}),
                pf_names=(PFRef("ens1f0", frozenset({0, 1, 2, 3})),),
                root_devices=(PFRef("0000:3b:00.1", frozenset({0, 2, 3})),),
                link_types=frozenset({"ether"}),
            ),
        ),
        exclusive=True,
        exclude_topology=True,
        origin="resourceList[0]",
    ),
    PoolSpec(
        prefix="intel.com",
        name="intel_sriov_dpdk",
        selectors=(
            Selector(
                vendors=frozenset({"8086"}),
                devices=INTEL_IDS,
                drivers=frozenset({"vfio-pci"}),
            ),
        ),
        exclusive=True,
        need_vhost_net=True,
        origin="resourceList[1]",
    ),
    PoolSpec(
        prefix="mellanox.com",
        name="mlnx_sriov_rdma",
        selectors=(
            Selector(
                vendors=frozenset({"15b3"}),
                devices=frozenset({"101e"}),
                drivers=frozenset({"mlx5_core"}),
                is_rdma=True,
            ),
            Selector(pci_addresses=frozenset({"0000:86:02.4", "0000:86:02.5"})),
        ),
        exclusive=True,
        is_rdma=True,
        additional_info={"*": {"token": "3e49019f-412f-4f02-824e-4cd195944205"}},
        origin="resourceList[2]",
    ),
]


@pytest.mark.parametrize(
    ("name", "text"),
    [("config.json", UPSTREAM_JSON), ("config.yaml", UPSTREAM_YAML)],
    ids=["json", "yaml"],
)
def test_upstream_config_parses_unchanged(tmp_path: Path, name: str, text: str) -> None:
    pools = load_config(write(tmp_path, text, name))
    assert pools == UPSTREAM_POOLS
    assert [p.resource_name for p in pools] == [
        "intel.com/intel_sriov_netdevice",
        "intel.com/intel_sriov_dpdk",
        "mellanox.com/mlnx_sriov_rdma",
    ]
    assert all(p.policy == "pack" for p in pools)


def test_yaml_and_json_give_the_same_pools() -> None:
    assert parse_config(UPSTREAM_YAML, "a.yaml") == parse_config(UPSTREAM_JSON, "a.json")
    # and JSON written by another tool from the YAML's data, too
    data = yaml.safe_load(UPSTREAM_YAML)
    assert parse_config(json.dumps(data), "b.json") == UPSTREAM_POOLS


def test_selector_object_and_one_item_list_are_the_same() -> None:
    one = '{"resourceList": [{"resourceName": "a", "selectors": {"drivers": ["iavf"]}}]}'
    many = '{"resourceList": [{"resourceName": "a", "selectors": [{"drivers": ["iavf"]}]}]}'
    assert parse_config(one, "x") == parse_config(many, "x")
    assert parse_config(one, "x")[0].selectors == (Selector(drivers=frozenset({"iavf"})),)


def test_no_selectors_means_one_empty_selector_taking_everything() -> None:
    (pool,) = parse_config("resourceList: [{resourceName: all}]", "x")
    assert pool.selectors == (Selector(),)


def test_ids_and_addresses_are_lowercased() -> None:
    text = """
    resourceList:
      - resourceName: a
        selectors: {vendors: ["15B3"], devices: ["101E"], pciAddresses: ["0000:AF:02.1"],
                    linkTypes: [Ether]}
    """
    (pool,) = parse_config(text, "x")
    assert pool.selectors[0] == Selector(
        vendors=frozenset({"15b3"}),
        devices=frozenset({"101e"}),
        pci_addresses=frozenset({"0000:af:02.1"}),
        link_types=frozenset({"ether"}),
    )


# -- the resource prefix ---------------------------------------------------------------------------


def test_default_prefix_is_intel_com() -> None:
    assert DEFAULT_PREFIX == "intel.com"
    (pool,) = parse_config("resourceList: [{resourceName: sriov_a}]", "x")
    assert (pool.prefix, pool.resource_name) == ("intel.com", "intel.com/sriov_a")


def test_default_prefix_can_be_changed_and_explicit_prefix_wins() -> None:
    text = "resourceList: [{resourceName: a}, {resourceName: b, resourcePrefix: nvidia.com}]"
    pools = parse_config(text, "x", default_prefix="example.org")
    assert [p.resource_name for p in pools] == ["example.org/a", "nvidia.com/b"]


def test_same_name_under_two_prefixes_is_two_pools() -> None:
    text = "resourceList: [{resourceName: a}, {resourceName: a, resourcePrefix: example.com}]"
    assert [p.resource_name for p in parse_config(text, "x")] == ["intel.com/a", "example.com/a"]


def test_resource_options() -> None:
    text = """
    resourceList:
      - resourceName: a
        excludeTopology: true
        allocationPolicy: spread
        selectors: [{isRdma: true}, {needVhostNet: true}]
    """
    (pool,) = parse_config(text, "x")
    assert pool.exclude_topology
    assert pool.policy == "spread"
    assert pool.is_rdma and pool.need_vhost_net
    assert pool.selectors == (Selector(is_rdma=True), Selector())


# -- the NSM form ----------------------------------------------------------------------------------

NSM_YAML = """\
nsm:
  pfs:
    - pf: "0000:3b:00.0"
      capabilities: [100g]
      serviceDomains: [example.com, other.org]
    - pf: ens1f1
      capabilities: [100g, 25g]
      serviceDomains: [example.com]
      vfs: "0-1"
      drivers: [iavf]
"""


def test_nsm_form_one_pool_per_domain_and_capability_merging_pfs() -> None:
    pools = parse_config(NSM_YAML, "nsm.yaml")
    by_name = {p.resource_name: p for p in pools}
    assert list(by_name) == ["example.com/100g", "other.org/100g", "example.com/25g"]
    # NSM-form selectors take bound VFs only: an unbound VF serves no pod
    by_address = Selector(root_devices=(PFRef("0000:3b:00.0"),), bound_only=True)
    by_name_and_vfs = Selector(
        pf_names=(PFRef("ens1f1", frozenset({0, 1})),),
        drivers=frozenset({"iavf"}),
        bound_only=True,
    )
    assert by_name["example.com/100g"].selectors == (by_address, by_name_and_vfs)
    assert by_name["other.org/100g"].selectors == (by_address,)
    assert by_name["example.com/25g"].selectors == (by_name_and_vfs,)
    assert [(p.prefix, p.name) for p in pools] == [
        ("example.com", "100g"),
        ("other.org", "100g"),
        ("example.com", "25g"),
    ]
    assert not any(p.exclusive for p in pools)
    assert [p.origin for p in pools] == ["nsm.pfs[0]", "nsm.pfs[0]", "nsm.pfs[1]"]


def test_nsm_form_json_equals_yaml() -> None:
    data = yaml.safe_load(NSM_YAML)
    assert parse_config(json.dumps(data), "nsm.json") == parse_config(NSM_YAML, "nsm.yaml")


def test_the_seed_resource() -> None:
    text = '{"nsm": {"pfs": [{"pf": "ens1f0", "capabilities": ["100g"], "serviceDomains": ["example.com"]}]}}'
    (pool,) = parse_config(text, "x")
    assert pool.resource_name == "example.com/100g"
    assert pool.selectors == (Selector(pf_names=(PFRef("ens1f0"),), bound_only=True),)


def test_nsm_pf_address_in_upper_case_is_a_root_device() -> None:
    text = "nsm: {pfs: [{pf: '0000:3B:00.0', capabilities: [100g], serviceDomains: [example.com]}]}"
    (pool,) = parse_config(text, "x")
    assert pool.selectors == (Selector(root_devices=(PFRef("0000:3b:00.0"),), bound_only=True),)


def test_nsm_options_come_from_the_pf_entry() -> None:
    text = """
    nsm:
      pfs:
        - {pf: ens1f0, capabilities: [100g], serviceDomains: [example.com],
           excludeTopology: true, allocationPolicy: spread}
    """
    (pool,) = parse_config(text, "x")
    assert pool.exclude_topology and pool.policy == "spread"


def test_both_formats_resource_list_pools_first() -> None:
    # nsm written before resourceList: the resourceList pools still come first (they claim first)
    text = """
    nsm:
      pfs: [{pf: ens1f0, capabilities: [100g], serviceDomains: [example.com]}]
    resourceList:
      - {resourceName: a, selectors: {pfNames: ["ens1f0#0-3"]}}
    """
    pools = parse_config(text, "x")
    assert [(p.resource_name, p.exclusive) for p in pools] == [
        ("intel.com/a", True),
        ("example.com/100g", False),
    ]


# -- errors: every one names the file and the field ------------------------------------------------


def rl(selectors: str, extra: str = "") -> str:
    """A one-resource resourceList in JSON with the given selectors (and extra resource keys)."""
    return f'{{"resourceList": [{{"resourceName": "a", {extra}"selectors": {selectors}}}]}}'


def nsm(pf: str) -> str:
    return f"nsm: {{pfs: [{pf}]}}"


PF = "pf: ens1f0, capabilities: [100g], serviceDomains: [example.com]"

ERRORS = [
    # (id, text, field, fragment of the reason)
    (
        "unknown-selector",
        rl('{"foo": ["x"]}'),
        "resourceList[0].selectors[0].foo",
        "unknown field 'foo'",
    ),
    (
        "unknown-selector-in-list",
        rl('[{"vendors": ["8086"]}, {"bar": 1}]'),
        "resourceList[0].selectors[1].bar",
        "unknown field 'bar'",
    ),
    (
        "unknown-resource-key",
        rl("{}", '"excludeTopolgy": true, '),
        "resourceList[0].excludeTopolgy",
        "unknown field",
    ),
    ("unknown-top-key", '{"resourcelist": []}', "resourcelist", "unknown field 'resourcelist'"),
    (
        "bad-range-reversed",
        rl('{"pfNames": ["ens1f0#3-1"]}'),
        "resourceList[0].selectors[0].pfNames",
        "'3-1': end before start",
    ),
    (
        "bad-range-text",
        rl('{"rootDevices": ["0000:3b:00.0#a"]}'),
        "resourceList[0].selectors[0].rootDevices",
        "bad VF range 'a'",
    ),
    (
        "bad-range-empty",
        rl('{"pfNames": ["ens1f0#"]}'),
        "resourceList[0].selectors[0].pfNames",
        "bad VF range ''",
    ),
    (
        "empty-pf-name",
        rl('{"pfNames": ["#0-3"]}'),
        "resourceList[0].selectors[0].pfNames",
        "empty PF name",
    ),
    (
        "bad-hex-vendor",
        rl('{"vendors": ["80866"]}'),
        "resourceList[0].selectors[0].vendors",
        "'80866' is not a 4-digit hex PCI ID",
    ),
    (
        "bad-hex-device",
        rl('{"devices": ["15zz"]}'),
        "resourceList[0].selectors[0].devices",
        "'15zz' is not a 4-digit hex PCI ID",
    ),
    (
        "hex-with-0x",
        rl('{"vendors": ["0x8086"]}'),
        "resourceList[0].selectors[0].vendors",
        "4-digit hex",
    ),
    (
        "bad-pci-address",
        rl('{"pciAddresses": ["3b:02.0"]}'),
        "resourceList[0].selectors[0].pciAddresses",
        "'3b:02.0' is not a PCI address",
    ),
    (
        "bad-pci-function",
        rl('{"pciAddresses": ["0000:3b:02.8"]}'),
        "resourceList[0].selectors[0].pciAddresses",
        "not a PCI address",
    ),
    (
        "bad-link-type",
        rl('{"linkTypes": ["wifi"]}'),
        "resourceList[0].selectors[0].linkTypes",
        "'wifi' is not ether or infiniband",
    ),
    (
        "selector-not-list",
        rl('{"vendors": "8086"}'),
        "resourceList[0].selectors[0].vendors",
        "valid list",
    ),
    (
        "is-rdma-not-bool",
        rl('{"isRdma": "perhaps"}'),
        "resourceList[0].selectors[0].isRdma",
        "boolean",
    ),
    (
        "yaml-unquoted-id",
        "resourceList: [{resourceName: a, selectors: {vendors: [8086]}}]",
        "resourceList[0].selectors[0].vendors[0]",
        "valid string",
    ),
    (
        "missing-name",
        '{"resourceList": [{"selectors": {}}]}',
        "resourceList[0].resourceName",
        "Field required",
    ),
    (
        "bad-name",
        '{"resourceList": [{"resourceName": "a/b"}]}',
        "resourceList[0].resourceName",
        "'a/b' is not a valid resource name",
    ),
    (
        "bad-prefix",
        '{"resourceList": [{"resourceName": "a", "resourcePrefix": "Intel_Com"}]}',
        "resourceList[0].resourcePrefix",
        "'Intel_Com' is not a DNS subdomain",
    ),
    (
        "duplicate-name",
        '{"resourceList": [{"resourceName": "a"}, {"resourceName": "b"}, {"resourceName": "a"}]}',
        "resourceList[2]",
        "duplicate resource intel.com/a (also resourceList[0])",
    ),
    (
        "duplicate-with-explicit-prefix",
        '{"resourceList": [{"resourceName": "a"}, {"resourceName": "a", "resourcePrefix": "intel.com"}]}',
        "resourceList[1]",
        "duplicate resource intel.com/a",
    ),
    (
        "nsm-clashes-with-resource-list",
        "resourceList: [{resourceName: 100g, resourcePrefix: example.com}]\n" + nsm(f"{{{PF}}}"),
        "nsm.pfs[0]",
        "resource example.com/100g is also defined by resourceList[0]",
    ),
    (
        "device-type",
        rl("{}", '"deviceType": "accelerator", '),
        "resourceList[0].deviceType",
        "deviceType 'accelerator' is not supported",
    ),
    (
        "aux-device-type",
        rl("{}", '"deviceType": "auxNetDevice", '),
        "resourceList[0].deviceType",
        "netDevice only",
    ),
    (
        "bad-policy",
        rl("{}", '"allocationPolicy": "random", '),
        "resourceList[0].allocationPolicy",
        "'pack' or 'spread'",
    ),
    (
        "additional-info-not-strings",
        rl("{}", '"additionalInfo": {"*": {"n": [1]}}, '),
        "resourceList[0].additionalInfo.*.n",
        "valid string",
    ),
    (
        "resource-list-not-list",
        '{"resourceList": {"resourceName": "a"}}',
        "resourceList",
        "valid list",
    ),
    (
        "nsm-missing-capabilities",
        nsm("{pf: ens1f0, serviceDomains: [example.com]}"),
        "nsm.pfs[0].capabilities",
        "Field required",
    ),
    (
        "nsm-empty-domains",
        nsm("{pf: ens1f0, capabilities: [100g], serviceDomains: []}"),
        "nsm.pfs[0].serviceDomains",
        "at least 1 item",
    ),
    (
        "nsm-bad-domain",
        nsm("{pf: ens1f0, capabilities: [100g], serviceDomains: [Example.COM]}"),
        "nsm.pfs[0].serviceDomains",
        "service domain 'Example.COM' is not a DNS subdomain",
    ),
    (
        "nsm-bad-capability",
        nsm("{pf: ens1f0, capabilities: [100g/x], serviceDomains: [example.com]}"),
        "nsm.pfs[0].capabilities",
        "capability '100g/x'",
    ),
    (
        "nsm-bad-vfs",
        nsm(f"{{{PF}}}, {{{PF.replace('ens1f0', 'ens1f1')}, vfs: '3-1'}}"),
        "nsm.pfs[1].vfs",
        "'3-1': end before start",
    ),
    (
        "nsm-empty-pf",
        nsm("{pf: '', capabilities: [100g], serviceDomains: [example.com]}"),
        "nsm.pfs[0].pf",
        "at least 1 character",
    ),
    (
        "nsm-unknown-key",
        nsm(f"{{{PF}, capability: 10g}}"),
        "nsm.pfs[0].capability",
        "unknown field 'capability'",
    ),
    ("empty-config", "", "(top level)", "expected an object"),
    ("only-comments", "# nothing here\n", "(top level)", "expected an object"),
    ("empty-object", "{}", "(top level)", "no pools"),
    ("no-pools", "resourceList: []\nnsm: {pfs: []}", "(top level)", "no pools"),
    ("not-an-object-list", "[1, 2]", "(top level)", "expected an object"),
    ("not-an-object-scalar", "just some text", "(top level)", "expected an object"),
]


@pytest.mark.parametrize(
    ("text", "field", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_config_errors_name_file_and_field(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert fragment in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("resourceList: [\n", "line 2, column 1"),
        ("resourceList:\n  - resourceName: a\n bad: indent\n", "line 3"),
        ('{"resourceList": [}', "line 1"),
        ("a: [b\nc: d", "line 2"),
        ("resourceList: [{resourceName: a}]\n---\nnsm: {}\n", "line 2, column 1"),
        ("resourceList: *pools", "line 1, column 15: found undefined alias"),
        ("resourceList: \x07", "unacceptable character #x0007"),
    ],
    ids=["unclosed", "indent", "broken-json", "unclosed-flow", "two-documents", "alias", "control"],
)
def test_invalid_yaml_names_file_and_position(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: not valid JSON or YAML: {where}"), msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: No such file or directory$"):
        load_config(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path))
    assert str(exc.value) == f"{tmp_path}: Is a directory"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"resourceList": [{"resourceName": "caf\xe9"}]}')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: not UTF-8 text"


def test_parse_config_names_what_it_is_given() -> None:
    with pytest.raises(ConfigError, match=r"^ConfigMap sriovdp-config: \(top level\): "):
        parse_config("[]", "ConfigMap sriovdp-config")


def test_first_error_is_reported_when_there_are_several(tmp_path: Path) -> None:
    text = rl('{"foo": 1}').replace('"resourceName": "a"', '"resourceName": "a/b"')
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "x")
    assert str(exc.value).count("x: ") == 1


# -- VF index ranges and PF references -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", {0}),
        ("7", {7}),
        ("0-3", {0, 1, 2, 3}),
        ("2-2", {2}),
        ("0,2-7", {0, 2, 3, 4, 5, 6, 7}),
        ("5,1", {1, 5}),
        (" 1 , 3-4 ", {1, 3, 4}),
        ("0-3,2-5", {0, 1, 2, 3, 4, 5}),
        ("10-12,127", {10, 11, 12, 127}),
    ],
)
def test_parse_vf_ranges(text: str, expected: set[int]) -> None:
    assert parse_vf_ranges(text) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad VF range ''"),
        ("3-1", "bad VF range '3-1': end before start"),
        ("a", "bad VF range 'a' (want N or N-M)"),
        ("-1", "bad VF range '-1'"),
        ("1-", "bad VF range '1-'"),
        ("1,,2", "bad VF range ''"),
        ("0x1", "bad VF range '0x1'"),
        ("1-2-3", "bad VF range '1-2-3'"),
        ("1 - 3", "bad VF range '1 - 3'"),
    ],
)
def test_parse_vf_ranges_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_vf_ranges(text)
    assert str(exc.value).startswith(reason)


@pytest.mark.parametrize(
    ("text", "ref", "canonical"),
    [
        ("ens1f0", PFRef("ens1f0"), "ens1f0"),
        ("ens1f0#0-3", PFRef("ens1f0", frozenset({0, 1, 2, 3})), "ens1f0#0-3"),
        ("ens1f0#0,2-7", PFRef("ens1f0", frozenset({0, 2, 3, 4, 5, 6, 7})), "ens1f0#0,2-7"),
        ("ens1f0#7,0-2,3", PFRef("ens1f0", frozenset({0, 1, 2, 3, 7})), "ens1f0#0-3,7"),
        ("ens1f0#1,3,5", PFRef("ens1f0", frozenset({1, 3, 5})), "ens1f0#1,3,5"),
        ("ens1f0#0-1", PFRef("ens1f0", frozenset({0, 1})), "ens1f0#0-1"),
        ("0000:3b:00.0#4", PFRef("0000:3b:00.0", frozenset({4})), "0000:3b:00.0#4"),
        ("0000:3b:00.0", PFRef("0000:3b:00.0"), "0000:3b:00.0"),
    ],
)
def test_pfref_parse_and_str_round_trip(text: str, ref: PFRef, canonical: str) -> None:
    assert PFRef.parse(text) == ref
    assert str(ref) == canonical
    assert PFRef.parse(str(ref)) == ref
    assert str(PFRef.parse(canonical)) == canonical


def test_pfref_without_range_means_every_vf() -> None:
    assert PFRef.parse("ens1f0").vfs is None


@pytest.mark.parametrize("text", ["#0-3", "", "ens1f0#", "ens1f0#3-1", "ens1f0#0#1"])
def test_pfref_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        PFRef.parse(text)
