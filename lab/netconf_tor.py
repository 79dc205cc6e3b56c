"""A NETCONF-managed switch whose data plane you can ping: `TorAgent` keeps the Linux bridges of
a TOR netns in step with the `switched-vlan` config committed in a NETCONF server (netconfd).

Layout (as torshim.drivers.linux): one bridge per VLAN, `<prefix><vlan>` (default `br-v100`).
- access VLAN N: the Linux port itself is enslaved to `br-vN` (the bridge is created, up, when
  missing; bridges are never deleted: an empty bridge carries nothing);
- no config, a port the server does not report, or trunk: the port has no master. Trunks would
  need 802.1Q sub-ports (8021q), which this test bed lacks: logged once per port until it leaves
  trunk mode.
Only the difference between the wanted masters and what `ip -j link` shows is applied.

Change detection: notifications. Checked against Debian's netconfd (yuma123 2.13) as
lab/netconfd.py runs it: after `<create-subscription/>` (NETCONF stream) every commit sends
`netconf-config-change` (ietf-netconf-notifications) a few ms after it, and a confirmed commit also
sends `netconf-confirmed-commit` (start/complete, and cancel/timeout on rollback). The agent
re-reads running on *any* notification (a rollback changes running too), plus a slow safety poll
(`safety_interval`, 5 s) that also repairs hand-made changes to the bridges. When the server does
not offer `:notification` or refuses the subscription, the agent polls running every
`poll_interval` (200 ms) and applies only when the raw XML changed. A lost session is reconnected
(and re-subscribed) with a back-off; `stop()` ends the thread within about `tick` (0.2 s).

As a process (how `nsm-lab up --switch netconf` runs it, recorded so `destroy` ends it):

    python -m lab.netconf_tor --config SD/torshim.yaml --switch NAME --netns NS \
        --ports swp1,swp2,Ethernet1/3=swp3 [--ready-file FILE]

It reaches the switch as torshim does (the `switches:` entry NAME of the config), writes
`<pid> <mode>` to the ready file after its first sync, and runs until SIGTERM or SIGINT (exit 0).
Bad arguments or config: one line on stderr, exit 2; no first sync within `--timeout`: exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lxml import etree

from torshim import validate
from torshim.drivers.base import SwitchParams
from torshim.drivers.linux import BRIDGE_PREFIX
from torshim.drivers.openconfig import parse_ports, read_filter
from torshim.errors import ShimError
from torshim.model import PortConfig
from torshim.netconf import NetconfSession

log = logging.getLogger(__name__)

NOTIFICATION_CAP = "urn:ietf:params:netconf:capability:notification:1.0"


def ip(netns: str, *args: str) -> str:
    cmd = ["ip", "-n", netns, *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def links(netns: str) -> dict[str, dict[str, Any]]:
    """name -> the `ip -j link` entry of every link in the netns."""
    return {e["ifname"]: e for e in json.loads(ip(netns, "-j", "link", "show") or "[]")}


class TorAgent:
    """See the module docstring. `ports`: {NETCONF port name: Linux port name in `netns`}."""

    def __init__(
        self,
        session_params: SwitchParams,
        netns: str,
        ports: Mapping[str, str],
        bridge_prefix: str = BRIDGE_PREFIX,
        *,
        poll_interval: float = 0.2,
        safety_interval: float = 5.0,
        tick: float = 0.2,
    ) -> None:
        self.params = session_params
        self.netns = netns
        self.ports = {validate.interface(k): validate.linux_ifname(v) for k, v in ports.items()}
        self.prefix = bridge_prefix
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self.tick = tick
        self.mode: str | None = None  # "notifications" or "polling", known after start()
        self.syncs = 0  # reads of running applied to the netns (for tests and status)
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: NetconfSession | None = None
        self._subscribed_to: Any = None  # the ncclient Manager our subscription lives on
        self._last_xml: str | None = None
        self._trunk_logged: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> TorAgent:
        """Connect, subscribe, apply running once, then follow changes in a thread. Raises the
        first error when the initial sync did not succeed within `timeout` (the agent is stopped)."""
        if self._thread is not None:
            raise RuntimeError("agent already started")
        self._thread = threading.Thread(target=self._run, name=f"tor-agent-{self.netns}",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        if not self._ready.wait(timeout) or self.syncs == 0:
            err = self.last_error
            self.stop()
            raise RuntimeError(f"TOR agent: no initial sync within {timeout:g} s: {err}") from err
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> TorAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as e:  # keep the data plane agent alive
                self.last_error = e
                log.warning("TOR agent %s: %s; retrying in %.1f s", self.netns, e, backoff)
                if self._session is not None:
                    self._session.close()
                self._subscribed_to = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2

    def _follow(self) -> None:
        """One session's worth: subscribe (or fall back to polling), sync, wait for changes."""
        if self._session is None:
            self._session = NetconfSession(self.params)
        m = self._session.manager()
        if self._subscribed_to is not m:
            self._subscribe(m)
        self.sync(force=True)
        self._ready.set()
        next_safety = time.monotonic() + self.safety_interval
        while not self._stop.is_set():
            if self._session._m is not m:
                return  # get-config reconnected: the subscription is gone, make a new one
            if self.mode == "notifications":
                n = m.take_notification(block=True, timeout=self.tick)
                if not self._session.alive:
                    raise ConnectionError("NETCONF session lost")
                if n is not None:
                    while m.take_notification(block=False) is not None:
                        pass  # one read covers a burst (config-change + confirmed-commit ...)
                    log.debug("TOR agent %s: notification, re-reading running", self.netns)
                    self.sync(force=True)
                    continue
                if time.monotonic() >= next_safety:
                    self.sync(force=True)
                    next_safety = time.monotonic() + self.safety_interval
            else:
                self._stop.wait(self.poll_interval)
                if self._stop.is_set():
                    break
                force = time.monotonic() >= next_safety
                self.sync(force=force)
                if force:
                    next_safety = time.monotonic() + self.safety_interval

    def _subscribe(self, m: Any) -> None:
        mode = "polling"
        if any(c.split("?", 1)[0] == NOTIFICATION_CAP for c in m.server_capabilities):
            try:
                m.create_subscription()
                mode = "notifications"
            except Exception as e:  # any refusal means: poll instead
                log.info("TOR agent %s: create-subscription refused (%s): polling", self.netns, e)
        if mode != self.mode:
            log.info("TOR agent %s: following running by %s", self.netns, mode)
        self.mode = mode
        self._subscribed_to = m

    # -- one sync -------------------------------------------------------------------------------
    def read(self) -> tuple[str, dict[str, PortConfig]]:
        assert self._session is not None
        data = self._session.get_config(read_filter(sorted(self.ports)))
        raw = etree.tostring(data, encoding="unicode")
        return raw, parse_ports(data, sorted(self.ports))

    def sync(self, force: bool = True) -> list[str]:
        """Read running and apply it; without `force`, only when the raw XML changed. Returns the
        `ip` commands run."""
        raw, configs = self.read()
        if not force and raw == self._last_xml:
            return []
        self._last_xml = raw
        done = self.apply(configs)
        self.syncs += 1
        return done

    def wanted_master(self, nc_port: str, cfg: PortConfig | None) -> str | None:
        if cfg is None or cfg.mode is None:
            self._trunk_logged.discard(nc_port)
            return None
        if cfg.mode == "trunk":
            if nc_port not in self._trunk_logged:
                self._trunk_logged.add(nc_port)
                log.warning(
                    "TOR agent %s: %s is a trunk; trunks need 8021q, which this machine lacks: "
                    "%s stays out of every bridge",
                    self.netns,
                    nc_port,
                    self.ports[nc_port],
                )
            return None
        self._trunk_logged.discard(nc_port)
        if cfg.access_vlan is None:
            return None
        return validate.linux_ifname(f"{self.prefix}{validate.vlan(cfg.access_vlan)}")

    def apply(self, configs: Mapping[str, PortConfig]) -> list[str]:
        """Make each Linux port's master what `configs` asks; only differences are changed."""
        have = links(self.netns)
        done: list[str] = []
        for nc_port, dev in sorted(self.ports.items()):
            if dev not in have:
                log.warning("TOR agent %s: port %s (%s) does not exist", self.netns, dev, nc_port)
                continue
            want = self.wanted_master(nc_port, configs.get(nc_port))
            if have[dev].get("master") == want:
                continue
            if want is None:
                ip(self.netns, "link", "set", "dev", dev, "nomaster")
                done.append(f"{dev} nomaster")
                continue
            if want not in have:
                ip(self.netns, "link", "add", "name", want, "up", "type", "bridge")
                have[want] = {"ifname": want}
                done.append(f"add {want}")
            ip(self.netns, "link", "set", "dev", dev, "master", want)
            done.append(f"{dev} master {want}")
        if done:
            log.info("TOR agent %s: %s", self.netns, "; ".join(done))
        return done


# -- as a process -------------------------------------------------------------------------------


def parse_port_map(items: Sequence[str]) -> dict[str, str]:
    """`swp1,Ethernet1/2=swp2` (comma separated, repeatable) -> {NETCONF name: Linux name}.
    ValidationError for a bad name, ValueError for none at all."""
    out: dict[str, str] = {}
    for item in (p.strip() for text in items for p in text.split(",")):
        if item:
            nc, _, dev = item.partition("=")
            out[validate.interface(nc)] = validate.linux_ifname(dev or nc)
    if not out:
        raise ValueError("no ports given")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.netconf_tor",
        description="Apply a NETCONF switch's committed switched-vlan config to Linux bridges.",
    )
    p.add_argument("--config", required=True, help="torshim config naming the switch")
    p.add_argument("--switch", required=True, help="the switch's name in that config")
    p.add_argument("--netns", required=True, help="the netns holding the ports and bridges")
    p.add_argument("--ports", action="append", required=True, help="NC[=LINUX],... port names")
    p.add_argument("--bridge-prefix", default=BRIDGE_PREFIX)
    p.add_argument("--ready-file", help="written (`<pid> <mode>`) once the first sync is done")
    p.add_argument("--timeout", type=float, default=15.0, help="for the first sync (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # ncclient logs every RPC at INFO: one line per safety poll
        for name in ("ncclient", "paramiko"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from torshim.config import load_config  # only the process needs the config loader

    try:
        params = load_config(args.config).switch_params(args.switch)
        agent = TorAgent(params, args.netns, parse_port_map(args.ports), args.bridge_prefix)
    except (ShimError, ValueError) as e:
        print(f"netconf_tor: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        agent.start(args.timeout)
    except RuntimeError as e:
        print(f"netconf_tor: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    if args.ready_file:  # written whole, then renamed: a reader never sees half of it
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {agent.mode}\n")
        os.replace(tmp, args.ready_file)
    log.info("TOR agent %s: running (%s), %d ports", args.netns, agent.mode, len(agent.ports))
    while not stop.wait(1.0):
        pass
    log.info("TOR agent %s: stopping", args.netns)
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
