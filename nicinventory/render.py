"""Output: rich tables for people, JSON and YAML (the `list -o json` contract) for programs."""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import datetime
from typing import Any, TextIO

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table as _RichTable

from nicinventory.diff import Change
from nicinventory.model import NIC, Inventory, Link

FORMATS = ("table", "json", "yaml")


class Table(_RichTable):
    """A rich table whose cells are plain text: `[ens5f0]` in a reason is data, not markup."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(escape(c) if isinstance(c, str) else c for c in cells), **kwargs)


def console(out: TextIO | None = None) -> Console:
    out = out or sys.stdout
    # Piped output gets a wide fixed width so tables are not wrapped into unreadable columns.
    return Console(file=out, width=None if out.isatty() else 200, highlight=False)


def dump(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _speed(mbps: int | None) -> str:
    if mbps is None:
        return "-"
    return f"{mbps // 1000}G" if mbps >= 1000 and mbps % 1000 == 0 else f"{mbps}M"


def _link(link: Link | None) -> str:
    if link is None:
        return "-"
    state = link.state or "?"
    return f"{state} {_speed(link.speed_mbps)}" if link.speed_mbps else state


def _tor(nic: NIC) -> str:
    return f"{nic.tor.switch} {nic.tor.port} ({nic.tor.source})" if nic.tor else "-"


def _vf_summary(nic: NIC) -> str:
    if nic.sriov is None:
        return "no SR-IOV"
    s = nic.sriov
    if not s.vfs:
        return f"0/{s.total_vfs} (disabled)" if s.num_vfs == 0 else f"{s.num_vfs}/{s.total_vfs}"
    kinds = Counter(
        "unbound" if v.driver is None else "vfio" if v.driver == "vfio-pci" else "netdev"
        for v in s.vfs
    )
    parts = ", ".join(f"{kinds[k]} {k}" for k in ("netdev", "vfio", "unbound") if kinds[k])
    return f"{s.num_vfs}/{s.total_vfs}: {parts}"


def _v(x: Any) -> str:
    return "-" if x is None else str(x)


def inventory_table(inv: Inventory, with_vfs: bool = False) -> Table:
    t = Table(title=f"{len(inv.nics)} NICs", title_justify="left")
    for col in ("PCI", "IFNAME", "MODEL", "DRIVER", "NUMA", "LINK", "MTU", "TOR", "VFS", "RDMA"):
        t.add_column(col, no_wrap=True)
    for nic in inv.nics:
        t.add_row(
            nic.pci_address,
            _v(nic.ifname),
            nic.model or f"{_v(nic.vendor_id)}:{_v(nic.device_id)}",
            _v(nic.driver),
            _v(nic.numa_node),
            _link(nic.link),
            _v(nic.link.mtu if nic.link else None),
            _tor(nic),
            _vf_summary(nic),
            "yes" if nic.rdma else "",
        )
        if with_vfs and nic.sriov:
            for vf in nic.sriov.vfs:
                t.add_row(
                    f"  └ {vf.pci_address}",
                    _v(vf.ifname),
                    f"VF {vf.index}",
                    _v(vf.driver),
                    "",
                    "",
                    "",
                    "",
                    f"iommu {_v(vf.iommu_group)}",
                    "yes" if vf.rdma else "",
                    style="dim",
                )
    return t


def nic_tables(nic: NIC) -> list[Table]:
    info = Table(title=f"{nic.ifname or nic.pci_address}", show_header=False, title_justify="left")
    info.add_column("field", style="bold")
    info.add_column("value")
    link = nic.link
    rows = [
        ("PCI address", nic.pci_address),
        ("Interface", _v(nic.ifname)),
        ("Model", f"{_v(nic.model)} [{_v(nic.vendor_id)}:{_v(nic.device_id)}]"),
        ("Driver", _v(nic.driver)),
        ("NUMA node", _v(nic.numa_node)),
        ("IOMMU group", _v(nic.iommu_group)),
        ("Link", _link(link)),
        ("Carrier", _v(link.carrier if link else None)),
        ("MTU", _v(link.mtu if link else None)),
        ("MAC", _v(link.mac if link else None)),
        ("Port name", _v(nic.phys_port_name)),
        ("RDMA", "yes" if nic.rdma else "no"),
        ("TOR", _tor(nic)),
        ("SR-IOV", _vf_summary(nic)),
    ]
    for k, v in rows:
        info.add_row(k, v)
    tables = [info]
    if nic.sriov and nic.sriov.vfs:
        vfs = Table(title=f"VFs of {nic.ifname or nic.pci_address}", title_justify="left")
        for col in ("INDEX", "PCI", "DEVICE", "DRIVER", "IFNAME", "IOMMU", "RDMA"):
            vfs.add_column(col, no_wrap=True)
        for vf in nic.sriov.vfs:
            vfs.add_row(
                str(vf.index),
                vf.pci_address,
                _v(vf.device_id),
                _v(vf.driver),
                _v(vf.ifname),
                _v(vf.iommu_group),
                "yes" if vf.rdma else "",
            )
        tables.append(vfs)
    return tables


def change_line(c: Change) -> str:
    when = datetime.fromtimestamp(c.time).isoformat(timespec="milliseconds")
    who = c.pci_address + (f" {c.ifname}" if c.ifname else "")
    if c.vf_index is not None:
        who += f" (VF {c.vf_index} of {c.nic})"
    fields = ", ".join(f"{k}: {_v(o)} -> {_v(n)}" for k, (o, n) in c.fields.items())
    return f"{when} {c.kind:<12} {who}{'  ' + fields if fields else ''}  [{c.source}]"


def write_change(c: Change, fmt: str, out: TextIO) -> None:
    if fmt == "table":
        out.write(change_line(c) + "\n")
    elif fmt == "json":
        out.write(json.dumps(c.to_dict()) + "\n")
    else:
        out.write("---\n" + yaml.safe_dump(c.to_dict(), sort_keys=False))
    out.flush()
