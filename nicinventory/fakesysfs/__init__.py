"""Fake sysfs trees for tests, benchmarks, the lab and the README's demo."""

from nicinventory.fakesysfs.builder import BuiltPF, FakeSysfs, PFSpec, VFSpec, vf_address
from nicinventory.fakesysfs.spec import (
    BuiltHost,
    HostSpec,
    build_host,
    load_spec,
    parse_index_ranges,
)

__all__ = [
    "BuiltHost",
    "BuiltPF",
    "FakeSysfs",
    "HostSpec",
    "PFSpec",
    "VFSpec",
    "build_host",
    "load_spec",
    "parse_index_ranges",
    "vf_address",
]
