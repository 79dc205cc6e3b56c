"""The daemon's core: one device-plugin server per pool, kept in step with the host and the config.

Inputs, all funnelled into one control loop (`run`): nicinventory's watcher (udev and netlink events,
periodic rescans), the config file (a ConfigMap update swaps a symlink: we compare what `stat`
follows), SIGHUP, and the resync timer (pod-resources, registration retries). Pools are reconciled by
difference: a pool whose resource is unchanged keeps its server and socket; kubelet only sees a new
ListAndWatch list when a device state really changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from deviceplugin import metrics
from deviceplugin.allocate import Allocator
from deviceplugin.config import DEFAULT_PREFIX, PoolSpec, load_config
from deviceplugin.podresources import PodResourcesError, held_devices
from deviceplugin.preferred import preferred
from deviceplugin.registration import (
    KubeletWatch,
    PluginWatcherEndpoint,
    RegistrationError,
    register_with_kubelet,
)
from deviceplugin.server import DevicePluginServer, ServeError
from deviceplugin.state import PoolStates
from deviceplugin.types import AllocationError, ConfigError, ContainerAllocation, DeviceState
from nicinventory.events import EventSource
from nicinventory.sysfs import SysfsReader
from nicinventory.watcher import InventoryWatcher

log = logging.getLogger(__name__)


@dataclass
class Options:
    config_file: str = "/etc/pcidp/config.json"  # the SR-IOV network device plugin's default
    sysfs_root: str = "/sys"
    kubelet_dir: str = "/var/lib/kubelet/device-plugins"
    registry_dir: str = "/var/lib/kubelet/plugins_registry"
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    device_info_dir: str | None = "/var/run/k8s.cni.cncf.io/devinfo/dp"
    cdi_dir: str | None = None
    dev_root: str = "/dev"
    resync_period: float = 60.0
    resource_prefix: str = DEFAULT_PREFIX
    event_sources: Callable[[], list[EventSource]] = field(default=lambda: [])

    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.kubelet_dir, "kubelet.sock")


class _Pool:
    """The PoolHandler of one resource: answers the kubelet from the manager's shared state."""

    def __init__(self, manager: DevicePluginManager, resource_name: str) -> None:
        self.manager = manager
        self.resource_name = resource_name

    def device_states(self) -> list[DeviceState]:
        with self.manager.lock:
            return self.manager.states.device_states(self.resource_name)

    def allocate(self, container_requests: list[list[str]]) -> list[ContainerAllocation]:
        m = self.manager
        with m.lock:
            spec = m.states.specs.get(self.resource_name)
            if spec is None:
                raise AllocationError(f"resource {self.resource_name} is no longer configured")
            out = []
            try:
                for ids in container_requests:
                    for dev_id in ids:
                        why = m.states.why_unhealthy(self.resource_name, dev_id)
                        if why:
                            raise AllocationError(f"device {dev_id} of {self.resource_name}: {why}")
                    devices = [m.states.devices(self.resource_name)[i] for i in ids]
                    out.append(m.allocator.allocate(spec, devices))
                for ids in container_requests:
                    m.states.mark_allocated(self.resource_name, ids)
            except AllocationError:
                metrics.ALLOCATIONS.labels(self.resource_name, "error").inc()
                raise
            metrics.ALLOCATIONS.labels(self.resource_name, "ok").inc()
            # The devices may now be Unhealthy in the other pools that list them (shared NSM
            # pools); no other list can change, so only those are compared and pushed.
            sharing = {
                name
                for ids in container_requests
                for dev_id in ids
                for name in m.states.assignment.pools_of(dev_id)
            } - {self.resource_name}
        if sharing:
            m.push(sharing)
        return out

    def preferred_allocation(
        self, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        m = self.manager
        with m.lock:
            devs = m.states.devices(self.resource_name)
            unknown = [d for d in [*available, *must_include] if d not in devs]
            if unknown:
                raise AllocationError(f"unknown device {unknown[0]} for {self.resource_name}")
            spec = m.states.specs[self.resource_name]
            return preferred(
                [devs[d] for d in available],
                must_include,
                size,
                m.states.allocated_per_pf(),
                spec.policy,
            )


class DevicePluginManager:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.lock = threading.RLock()
        self.states = PoolStates(grace=opts.resync_period)
        self.reader = SysfsReader(opts.sysfs_root)
        self.allocator = Allocator(
            opts.sysfs_root, opts.dev_root, opts.device_info_dir, opts.cdi_dir
        )
        self.watcher = InventoryWatcher(
            self.reader, opts.event_sources(), rescan_period=opts.resync_period
        )
        self.servers: dict[str, DevicePluginServer] = {}
        self.watch_endpoints: dict[str, PluginWatcherEndpoint] = {}
        self.registered: dict[str, bool] = {}
        # the kubelet.sock each pool registered on (see _reregister_all)
        self._registered_on: dict[str, tuple[int, int, int] | None] = {}
        self.last_sent: dict[str, list[DeviceState]] = {}
        self.specs: list[PoolSpec] = []
        self._config_sig: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._kubelet_restarted = threading.Event()
        self._kubelet_watch: KubeletWatch | None = None
        self._pod_resources_warned = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the config (ConfigError if bad), scan, serve every pool, register."""
        self.specs = load_config(self.opts.config_file, self.opts.resource_prefix)
        self._config_sig = self._signature()
        self.reader.check_root()
        inventory = self.watcher.start()
        with self.lock:
            self.states.update(self.specs, inventory)
        self._sync_in_use()
        # Watch before serving: a kubelet restart while the pools register (both starting at
        # boot) wipes sockets already served; a watch made afterwards would take their absence
        # for the normal state, and they would stay unserved and unregistered for good.
        self._kubelet_watch = KubeletWatch(
            self.opts.kubelet_dir,
            # list(): a copy, as the control loop may add or remove pools meanwhile
            lambda: [s.socket_path for s in list(self.servers.values())],
            self._kubelet_restarted.set,
        )
        self._kubelet_watch.start()
        self._reconcile_servers(strict=True)

    def stop(self) -> None:
        """Stop serving and remove what we wrote: sockets, device-info files, CDI specs."""
        self._stop.set()
        if self._kubelet_watch:
            self._kubelet_watch.stop()
        self.watcher.stop()
        for name in list(self.servers):
            self._stop_pool(name)
        with self.lock:
            for spec in self.states.specs.values():
                for addr in self.states.known_devices(spec.resource_name):
                    self.allocator.release_device_info(spec.resource_name, addr)
                if self.opts.cdi_dir:
                    self.allocator.remove_cdi_spec(spec)

    def request_stop(self) -> None:
        """SIGTERM: leave run(); the caller then calls stop() (safe from a signal handler)."""
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: reload the config and rescan the host (safe from a signal handler)."""
        self._reload.set()
        self.watcher.request_rescan("sighup")

    @property
    def ready(self) -> bool:
        return bool(self.servers) and all(self.registered.get(n) for n in self.servers)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        next_resync = time.monotonic() + self.opts.resync_period
        while not self._stop.is_set():
            first = next(self.watcher.changes(timeout=0.2), None)
            if first is not None:  # apply a burst as one update, without waiting for more
                for change in [first, *self.watcher.drain()]:
                    log.info("host: %s %s (%s)", change.kind, change.pci_address, change.source)
                self._apply_inventory()
            if self._reload.is_set() or self._signature() != self._config_sig:
                self._reload.clear()
                self.reload_config()
            if self._kubelet_restarted.is_set():
                self._kubelet_restarted.clear()
                log.info("kubelet restarted or wiped our sockets: re-serving and re-registering")
                self._reregister_all()
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.opts.resync_period
                self._sync_in_use()
                self._apply_inventory()
                self._serve_missing()
                self._retry_registrations()

    def _apply_inventory(self) -> None:
        self._update_states(self.specs)
        self.push()

    def _update_states(self, specs: list[PoolSpec]) -> None:
        """New membership; a VF no longer listed in a pool loses its device-info file there."""
        with self.lock:
            before = {n: set(self.states.known_devices(n)) for n in self.states.specs}
            self.states.update(specs, self.watcher.inventory)
            for name, addrs in before.items():
                for addr in addrs - set(self.states.known_devices(name)):
                    self.allocator.release_device_info(name, addr)

    def reload_config(self) -> None:
        """A new config: keep the old one on any error; reconcile pools by difference."""
        sig = self._signature()
        try:
            specs = load_config(self.opts.config_file, self.opts.resource_prefix)
        except ConfigError as e:
            log.error("config reload failed, keeping the last good config: %s", e)
            self._config_sig = sig
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        self._config_sig = sig
        metrics.CONFIG_RELOADS.labels("ok").inc()
        old = {s.resource_name: s for s in self.specs}
        self.specs = specs
        self._update_states(specs)
        if self.opts.cdi_dir:
            for name in old.keys() - {s.resource_name for s in specs}:
                self.allocator.remove_cdi_spec(old[name])
        changed = [s.resource_name for s in specs if old.get(s.resource_name) not in (None, s)]
        log.info("config reloaded: %d pools (%s changed)", len(specs), ", ".join(changed) or "none")
        self._reconcile_servers()

    def push(self, only: Collection[str] | None = None) -> None:
        """Send a new list to each pool whose device states changed, and only those; `only`: the
        pools that may have changed (the others are not even compared)."""
        with self.lock:
            for name, server in list(self.servers.items()):  # the loop thread may add or drop pools
                if only is not None and name not in only:
                    continue
                cur = self.states.device_states(name)
                if cur != self.last_sent.get(name):
                    self.last_sent[name] = cur
                    server.notify()
                    metrics.set_devices(name, cur)

    # -- pools and registration -----------------------------------------------------------------
    def _reconcile_servers(self, strict: bool = False) -> None:
        wanted = {s.resource_name for s in self.specs}
        for name in [n for n in self.servers if n not in wanted]:
            log.info("pool %s removed from the config: stopping its server", name)
            self._stop_pool(name)
        self._serve_missing(strict)
        self.push()

    def _serve_missing(self, strict: bool = False) -> None:
        """Serve and register every configured pool not served yet. One that cannot be served
        (socket path too long, kubelet's folder gone) is logged and tried again on the next
        resync, reload or kubelet restart, while the others keep serving; `strict` (start-up)
        raises instead, so a daemon that cannot serve its config exits 2 saying why."""
        for name in sorted({s.resource_name for s in self.specs} - set(self.servers)):
            try:
                self._start_pool(name)
            except ServeError as e:
                if strict:
                    raise
                if name in self.servers:  # served, but its plugin-watcher socket failed
                    self._stop_pool(name)
                log.error("cannot serve %s (retrying every resync): %s", name, e)

    def _start_pool(self, name: str) -> None:
        server = DevicePluginServer(_Pool(self, name), self.opts.kubelet_dir)
        server.start()
        self.servers[name] = server
        with self.lock:
            self.last_sent[name] = self.states.device_states(name)
            metrics.set_devices(name, self.last_sent[name])
        if os.path.isdir(self.opts.registry_dir):
            ep = PluginWatcherEndpoint(self.opts.registry_dir, name, server.socket_path)
            ep.start()
            self.watch_endpoints[name] = ep
        self._register(name)

    def _stop_pool(self, name: str) -> None:
        ep = self.watch_endpoints.pop(name, None)
        if ep:
            ep.stop()
        server = self.servers.pop(name)
        server.stop(0.5)
        self.registered.pop(name, None)
        self._registered_on.pop(name, None)
        self.last_sent.pop(name, None)
        metrics.forget(name)

    def _register(self, name: str) -> None:
        server = self.servers[name]
        if not os.path.exists(self.opts.kubelet_socket):
            self._set_registered(name, False)
            log.warning(
                "no kubelet socket at %s yet; %s will register when it appears",
                self.opts.kubelet_socket,
                name,
            )
            return
        kubelet = self._kubelet_identity()  # before: a kubelet restart meanwhile is noticed
        try:
            register_with_kubelet(
                self.opts.kubelet_socket, os.path.basename(server.socket_path), name
            )
        except RegistrationError as e:
            self._set_registered(name, False)
            log.warning("registering %s failed (retrying every resync): %s", name, e)
            return
        self._registered_on[name] = kubelet
        self._set_registered(name, True)
        log.info("registered %s with kubelet (%s)", name, server.socket_path)

    def _set_registered(self, name: str, ok: bool) -> None:
        self.registered[name] = ok
        metrics.REGISTERED.labels(name).set(1 if ok else 0)

    def _reregister_all(self) -> None:
        """Re-serve the pools whose socket was wiped; re-register those not registered with the
        kubelet now listening. A pool still registered with it is left alone: when only some
        of our sockets went, registering the others again is a duplicate to kubelet."""
        kubelet = self._kubelet_identity()
        for name in list(self.servers):
            if not os.path.exists(self.servers[name].socket_path):  # kubelet wiped it: re-serve
                self._stop_pool(name)
            elif not self.registered.get(name) or self._registered_on.get(name) != kubelet:
                self._register(name)
        self._serve_missing()

    def _retry_registrations(self) -> None:
        for name, ok in list(self.registered.items()):
            if not ok:
                self._register(name)

    # -- helpers --------------------------------------------------------------------------------
    def _kubelet_identity(self) -> tuple[int, int, int] | None:
        """Which kubelet.sock is there: a restarted kubelet makes a new file."""
        try:
            st = os.stat(self.opts.kubelet_socket)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    def _signature(self) -> tuple[int, int, int] | None:
        """What changes when the config changes, through a ConfigMap's symlink swap too."""
        try:
            st = os.stat(self.opts.config_file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _sync_in_use(self) -> None:
        """Learn what pods hold and release the rest. Shared (NSM-form) pools need it to offer a
        VF again through the others; every pool needs it once something was allocated, or a VF
        stays held after its pod went: counted by preferred allocation's pack/spread forever, and
        Unhealthy ("in use through ...") in the pool it moves to when rebound or re-configured."""
        with self.lock:
            held_any = bool(self.states.holder)
        if not held_any and all(s.exclusive for s in self.specs):
            return
        names = {s.resource_name for s in self.specs}
        try:
            held = held_devices(self.opts.pod_resources_socket, names)
        except PodResourcesError as e:
            if not self._pod_resources_warned:
                log.warning("%s; allocated VFs count as in use until a restart", e)
                self._pod_resources_warned = True
            return
        with self.lock:
            self.states.sync_in_use(held)
        self.push()
