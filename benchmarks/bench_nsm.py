"""From nsmgr's Request to an answered Connection, with the TOR shim on netconfd (issue 6).

Set-up, all real and on loopback: netconfd behind sshd (tests/torshim/netconf_server.py), the TOR
shim's daemon (gRPC on TCP, registered in the registry), an `nsm-registry` in this process over
TCP, and nsmgr's remote endpoint client (`nsmgr.remote.RegistryEndpoints`), which is what the agent
calls between recording a VF's state and plugging it: Find in the registry, then Request to the
endpoint that answered, which commits the port change on the switch and answers the context.
Sessions (SSH to netconfd, gRPC channels) are open before timing: "without connection set-up".

Figures, interleaved so noise hits all alike:
- request: Find + Request, the port gains VLAN 100 (goal ≤ 25 ms median);
- close: Close, the port loses it again (so every request really changes the switch);
- floor: the same Request straight to the shim (no Find), and a Close, i.e. the shim and the
  switch alone; the ratio request / floor is what the registry hop adds.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import Metric, median, p90, p99, sample_interleaved
from nsmgr.endpoint import EndpointRequest, LocalServices
from nsmgr.model import PodRef, ServiceRef
from nsmgr.registry.store import SqliteBackend
from nsmgr.remote import RegistryEndpoints, request_of
from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

GOAL_MS = 25.0
RED = "red.example.com"


def _available() -> str | None:
    try:
        from tests.torshim.netconf_server import needs_netconfd
    except ImportError as e:  # run outside the repository
        return str(e)
    return needs_netconfd.kwargs["reason"] if needs_netconfd.args[0] else None


@contextlib.contextmanager
def _world() -> Iterator[tuple[RegistryEndpoints, object, str]]:
    import grpc

    from tests.nsmgr.registry import helpers
    from tests.torshim.netconf_server import running_server
    from tests.torshim.shim_helpers import netconf_switch, write_config
    from torshim.config import load_config
    from torshim.daemon import Daemon

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nsm-bench-")))
        sock_dir = stack.enter_context(helpers.short_tmpdir())
        switch = stack.enter_context(running_server("candidate"))
        reg = stack.enter_context(
            helpers.served(
                sock_dir, domain="example.com", backend=SqliteBackend(":memory:"), tcp=True
            )
        )
        registry = f"tcp://127.0.0.1:{reg.tcp_port}"
        path, _ = write_config(
            tmp,
            netconf_switch(switch),
            [  # two ports: the measured requests and the floor's must not share a VLAN's refcount
                {"node": "node-a", "pf": "ens1f0", "switch": "tor1", "port": "Ethernet1/1"},
                {"node": "node-a", "pf": "ens1f1", "switch": "tor1", "port": "Ethernet1/2"},
            ],
            server={"listen": "127.0.0.1:0", "metrics": ""},
        )
        Path(path).write_text(Path(path).read_text() + f"registry: {{url: '{registry}'}}\n")
        shim = Daemon(load_config(path))
        shim.start()
        stack.callback(shim.stop)
        if not shim.ready.wait(30) or shim.registrar is None:
            raise RuntimeError("the TOR shim did not get ready")
        shim.registrar.registered.wait(10)
        client = RegistryEndpoints(LocalServices([]), registry, "node-a", timeout=10)
        stack.callback(client.close_channels)
        direct = grpc.insecure_channel(f"127.0.0.1:{shim.grpc_port}")
        stack.callback(direct.close)
        yield client, pb_grpc.NetworkServiceStub(direct), registry


def run(quick: bool = False) -> list[Metric]:
    missing = _available()
    if missing:
        return [Metric("nsm.request", f"nsm: skipped ({missing})", "ms", 0.0, None, runs=1)]
    runs, warmup = (10, 3) if quick else (200, 20)
    with _world() as (client, direct, _registry):
        req = EndpointRequest(
            connection_id="bench-1",
            service=ServiceRef.parse(RED),
            node="node-a",
            pci_address="0000:3b:02.0",
            pf_pci="0000:3b:00.0",
            pf_ifname="ens1f0",
            vf_index=0,
            mechanism="KERNEL",
            pod=PodRef("red", "bench", "uid-bench"),
        )
        floor_req = request_of(
            EndpointRequest(
                **{**req.__dict__, "connection_id": "bench-floor", "pf_ifname": "ens1f1"}
            ),
            "node-a",
        )
        state = {"e2e": False, "floor": False}

        def e2e() -> None:
            if state["e2e"]:
                client.close(req)
            else:
                client.request(req)
            state["e2e"] = not state["e2e"]

        def floor() -> None:
            if state["floor"]:
                direct.Close(pb.Connection(id="bench-floor"), timeout=10)
            else:
                direct.Request(floor_req, timeout=10)
            state["floor"] = not state["floor"]

        # each function alternates request and close; split the samples by parity afterwards
        s = sample_interleaved({"e2e": e2e, "floor": floor}, runs * 2, warmup * 2)
    # warm-up ran an even number of calls, so even samples are requests, odd ones closes
    e2e_req, e2e_close = s["e2e"][0::2], s["e2e"][1::2]
    floor_req_ms, floor_close = s["floor"][0::2], s["floor"][1::2]
    ratio = median(e2e_req) / median(floor_req_ms)
    return [
        Metric(
            "nsm.request",
            "NSM: nsmgr Request → Connection (Find + shim + netconfd commit)",
            "ms",
            median(e2e_req),
            p90(e2e_req),
            goal=f"≤ {GOAL_MS:g} ms",
            met=median(e2e_req) <= GOAL_MS,
            runs=len(e2e_req),
            p99=p99(e2e_req),
        ),
        Metric(
            "nsm.close",
            "NSM: nsmgr Close (shim + netconfd commit)",
            "ms",
            median(e2e_close),
            p90(e2e_close),
            runs=len(e2e_close),
        ),
        Metric(
            "nsm.floor_request",
            "NSM floor: the same Request straight to the shim (no Find)",
            "ms",
            median(floor_req_ms),
            p90(floor_req_ms),
            runs=len(floor_req_ms),
        ),
        Metric(
            "nsm.floor_close",
            "NSM floor: Close straight to the shim",
            "ms",
            median(floor_close),
            p90(floor_close),
            runs=len(floor_close),
        ),
        Metric(
            "nsm.request_ratio",
            "NSM: Request via the registry / straight to the shim (medians)",
            "x",
            ratio,
            None,
            runs=len(e2e_req),
        ),
    ]
