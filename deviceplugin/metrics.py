"""Prometheus metrics and the readiness endpoint (`--metrics-port`)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from deviceplugin.types import DeviceState

DEVICES = Gauge("sriovnsm_dp_devices", "Devices a pool reports, by health", ["resource", "health"])
ALLOCATIONS = Counter(
    "sriovnsm_dp_allocations", "Allocate calls, by result", ["resource", "result"]
)
REGISTERED = Gauge(
    "sriovnsm_dp_registered", "1 when the pool is registered with kubelet", ["resource"]
)
CONFIG_RELOADS = Counter("sriovnsm_dp_config_reloads", "Config reloads, by result", ["result"])


def set_devices(resource: str, states: list[DeviceState]) -> None:
    healthy = sum(1 for s in states if s.healthy)
    DEVICES.labels(resource, "Healthy").set(healthy)
    DEVICES.labels(resource, "Unhealthy").set(len(states) - healthy)


def forget(resource: str) -> None:
    """A pool removed from the config takes its series with it."""
    with contextlib.suppress(KeyError):
        DEVICES.remove(resource, "Healthy")
    with contextlib.suppress(KeyError):
        DEVICES.remove(resource, "Unhealthy")
    with contextlib.suppress(KeyError):
        REGISTERED.remove(resource)
