"""Host NIC inventory: SR-IOV PFs and VFs read from sysfs, kept current from udev and netlink."""

from nicinventory.errors import InventoryError, NotFoundError, ScanError
from nicinventory.model import NIC, VF, Inventory, Link, Sriov, TorPort
from nicinventory.sysfs import SysfsReader

__all__ = [
    "NIC",
    "VF",
    "Inventory",
    "InventoryError",
    "Link",
    "NotFoundError",
    "ScanError",
    "Sriov",
    "SysfsReader",
    "TorPort",
]
