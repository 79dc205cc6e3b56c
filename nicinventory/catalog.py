"""Known SR-IOV NIC models: display names for the inventory and the facts the fake sysfs builder needs.

IDs are the PCI IDs the kernel shows in `vendor` / `device` (pci.ids); VF IDs are what the PF spawns.
"""

from __future__ import annotations

from dataclasses import dataclass

INTEL = "8086"
MELLANOX = "15b3"
REDHAT_VIRTIO = "1af4"


@dataclass(frozen=True)
class NicModel:
    key: str  # short name used in host specs: e810, cx6dx, x710, 82599
    name: str
    vendor_id: str
    device_id: str
    driver: str
    vf_device_id: str
    vf_driver: str
    total_vfs: int
    speed_mbps: int
    rdma: bool = False
    pci_class: str = "0x020000"


MODELS: dict[str, NicModel] = {
    m.key: m
    for m in (
        NicModel("e810", "Intel E810-C 100G", INTEL, "1592", "ice", "1889", "iavf", 128, 100000),
        NicModel(
            "cx6dx",
            "Mellanox ConnectX-6 Dx",
            MELLANOX,
            "101d",
            "mlx5_core",
            "101e",
            "mlx5_core",
            127,
            100000,
            rdma=True,
        ),
        NicModel("x710", "Intel X710 10G", INTEL, "1572", "i40e", "154c", "iavf", 64, 10000),
        NicModel(
            "82599", "Intel 82599ES 10G", INTEL, "10fb", "ixgbe", "10ed", "ixgbevf", 63, 10000
        ),
    )
}

# Names for PCI IDs we may meet without a builder model (other members of the same families).
_EXTRA_NAMES: dict[tuple[str, str], str] = {
    (INTEL, "1593"): "Intel E810-C 25G",
    (INTEL, "159b"): "Intel E810-XXV 25G",
    (INTEL, "158b"): "Intel XXV710 25G",
    (INTEL, "1583"): "Intel XL710 40G",
    (INTEL, "1889"): "Intel E800 VF",
    (INTEL, "154c"): "Intel 700 VF",
    (INTEL, "10ed"): "Intel 82599 VF",
    (MELLANOX, "1017"): "Mellanox ConnectX-5",
    (MELLANOX, "1019"): "Mellanox ConnectX-5 Ex",
    (MELLANOX, "101b"): "Mellanox ConnectX-6",
    (MELLANOX, "1021"): "Mellanox ConnectX-7",
    (MELLANOX, "101e"): "Mellanox ConnectX VF",
    (REDHAT_VIRTIO, "1000"): "Virtio network device (legacy)",
    (REDHAT_VIRTIO, "1041"): "Virtio network device",
}

_NAMES: dict[tuple[str, str], str] = {
    **{(m.vendor_id, m.device_id): m.name for m in MODELS.values()},
    **_EXTRA_NAMES,
}


def model_name(vendor_id: str | None, device_id: str | None) -> str | None:
    if vendor_id is None or device_id is None:
        return None
    return _NAMES.get((vendor_id, device_id))
