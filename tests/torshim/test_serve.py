"""`torshim serve` and the operator commands, for real: gRPC NetworkService over a unix socket,
/metrics and /readyz over HTTP, the reconcile loop, and the CLI as a user runs it, all against
netconfd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from tests.torshim.netconf_server import NetconfServer, needs_netconfd
from tests.torshim.shim_helpers import netconf_switch, write_config
from tests.torshim.test_netconf_drivers import look, reset
from torshim.config import load_config
from torshim.daemon import Daemon
from torshim.drivers.openconfig import OpenConfigDriver
from torshim.model import PortConfig
from torshim.netconf import NetconfSession

MAP = [
    {"node": "node-a", "pf": "ens1f0", "switch": "tor1", "port": "Ethernet1/1"},
    {"node": "node-a", "pf": "ens1f1", "switch": "tor1", "port": "Ethernet1/2"},
]
P1, P2 = "Ethernet1/1", "Ethernet1/2"
TORSHIM = [sys.executable, "-m", "torshim.cli"]


def request(cid: str, service: str = "red.example.com", ns: str = "red", **params: str) -> Any:
    p = {
        "nodeName": "node-a",
        "pfInterfaceName": "ens1f0",
        "pciAddress": "0000:3b:02.0",
        "name": "nsm0",
    }
    p.update(params)
    return pb.NetworkServiceRequest(
        connection=pb.Connection(id=cid, network_service=service, labels={"namespace": ns}),
        mechanism_preferences=[pb.Mechanism(cls="LOCAL", type="KERNEL", parameters=p)],
    )


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="tsh")  # unix socket paths must stay under 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def config(tmp_path: Path, server: NetconfServer, admin: NetconfSession, sockdir: str) -> str:
    reset(admin)
    srv = {"listen": f"unix://{sockdir}/torshim.sock", "metrics": "127.0.0.1:0"}
    path, _ = write_config(tmp_path, netconf_switch(server), MAP, server=srv)
    return path


@pytest.fixture
def daemon(config: str) -> Iterator[Daemon]:
    d = Daemon(load_config(config))
    d.start()
    try:
        assert d.ready.wait(30), "the start-up reconcile did not finish"
        yield d
    finally:
        d.stop()


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[pb_grpc.NetworkServiceStub]:
    with grpc.insecure_channel(daemon.listen) as ch:
        yield pb_grpc.NetworkServiceStub(ch)


def http(daemon: Daemon, path: str) -> tuple[int, str]:
    assert daemon.http is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@needs_netconfd
def test_request_and_close_over_grpc(
    daemon: Daemon, stub: pb_grpc.NetworkServiceStub, admin: NetconfSession
) -> None:
    conn = stub.Request(request("c1"), timeout=20)
    assert look(admin, P1)[P1] == PortConfig.trunk(P1, {100})
    ctx = conn.context
    assert ctx.ethernet_context.vlan_tag == 100 and ctx.MTU == 9000
    assert list(ctx.ip_context.src_ip_addrs) == ["10.100.0.3/29"]
    assert [(r.prefix, r.nextHop) for r in ctx.ip_context.src_routes] == [
        ("10.0.0.0/8", "10.100.0.1")
    ]
    assert list(ctx.dns_context.configs[0].dns_server_ips) == ["10.100.0.2"]
    assert ctx.extra_context["torPort"] == P1 and ctx.extra_context["torSwitch"] == "tor1"
    assert conn.mechanism.type == "KERNEL" and conn.network_service_endpoint_name == "torshim"
    assert conn.path.path_segments[-1].name == "torshim" and conn.state == pb.UP
    stub.Close(conn, timeout=20)
    assert look(admin, P1)[P1].trunk_vlans == frozenset()
    stub.Close(conn, timeout=20)  # repeated Close: fine
    status, text = http(daemon, "/metrics")
    assert status == 200
    assert 'torshim_requests_total{code="OK",op="Request"} 1.0' in text
    assert 'torshim_requests_total{code="OK",op="Close"} 2.0' in text
    assert "torshim_switch_seconds_bucket" in text
    assert http(daemon, "/readyz") == (200, "ok\n")


@needs_netconfd
@pytest.mark.parametrize(
    ("req", "code", "text"),
    [
        (request("x", ns="blue"), grpc.StatusCode.PERMISSION_DENIED, "may not use"),
        (request("x", "nope.example.com"), grpc.StatusCode.NOT_FOUND, "no service"),
        (request("x", pfInterfaceName="ens9f9"), grpc.StatusCode.NOT_FOUND, "no TOR port"),
        (request("x", pciAddress=""), grpc.StatusCode.INVALID_ARGUMENT, "pciAddress"),
        (request("", pciAddress="0000:3b:02.0"), grpc.StatusCode.INVALID_ARGUMENT, "no id"),
        (request("x", pciAddress="<x/>"), grpc.StatusCode.INVALID_ARGUMENT, "PCI"),
        (
            pb.NetworkServiceRequest(connection=pb.Connection(id="x", network_service="a")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no mechanism",
        ),
    ],
)
def test_refusals_carry_the_right_code_and_touch_nothing(
    daemon: Daemon,
    stub: pb_grpc.NetworkServiceStub,
    admin: NetconfSession,
    req: Any,
    code: grpc.StatusCode,
    text: str,
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Request(req, timeout=20)
    assert exc.value.code() == code and text in exc.value.details()
    assert "\n" not in exc.value.details()
    assert daemon.store.connections() == [] and daemon.store.leases() == []
    assert look(admin, P1)[P1] == PortConfig(P1)


@needs_netconfd
def test_reconcile_loop_repairs_after_a_reconnect(
    daemon: Daemon, stub: pb_grpc.NetworkServiceStub, admin: NetconfSession, server: NetconfServer
) -> None:
    stub.Request(request("c1"), timeout=20)
    rogue = OpenConfigDriver(server.params())
    try:
        rogue.converge({P1: PortConfig.trunk(P1, {100, 250}), P2: PortConfig.trunk(P2, {200})})
    finally:
        rogue.close()
    worker = daemon.shim._switch("tor1").worker
    worker.call(lambda d: d.close()).result(10)
    worker._drop_driver()  # the session is gone, as after a switch reboot
    worker.call(lambda d: d.read([P1])).result(10)  # any use re-connects
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ports = look(admin, P1, P2)
        if ports[P1].trunk_vlans == {100} and ports[P2].trunk_vlans == frozenset():
            break
        time.sleep(0.2)
    assert look(admin, P1)[P1].trunk_vlans == {100}  # the rogue VLAN 250 is gone
    assert look(admin, P2)[P2].trunk_vlans == frozenset()  # the leftover 200 is gone
    assert "torshim_drift_repaired_total" in http(daemon, "/metrics")[1]


# -- the CLI as a user runs it --------------------------------------------------------------------


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*TORSHIM, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


@needs_netconfd
def test_cli_apply_show_audit_release(config: str, admin: NetconfSession) -> None:
    out = json.loads(
        run("apply", "--config", config, "--switch", "tor1", "--port", P2,
            "--service", "blue.example.com", "-o", "json").stdout
    )  # fmt: skip
    assert out["port_config"]["trunk_vlans"] == [200] and out["users"] == 1
    assert look(admin, P2)[P2].trunk_vlans == {200}
    shown = json.loads(run("show", "--config", config, "-o", "json").stdout)
    assert [c["id"] for c in shown["connections"]] == [f"manual:tor1:{P2}:blue.example.com"]
    assert shown["ports"][0]["in_sync"] is True
    table = run("show", "--config", config).stdout
    assert "blue.example.com" in table and "trunk 200" in table
    audit = json.loads(run("audit", "--config", config, "-o", "json").stdout)
    assert audit["clean"] is True
    # drift: the audit says so with exit 1, --fix repairs it with exit 0
    reset(admin)
    res = run("audit", "--config", config, "-o", "json", check=False)
    assert res.returncode == 1
    assert [p["status"] for p in json.loads(res.stdout)["ports"]] == ["ok", "drift"]
    assert run("audit", "--config", config, "--fix").returncode == 0
    assert look(admin, P2)[P2].trunk_vlans == {200}
    text = run("release", "--config", config, "--switch", "tor1", "--port", P2,
               "--service", "blue.example.com").stdout  # fmt: skip
    assert "released" in text and look(admin, P2)[P2].trunk_vlans == frozenset()
    res = run("release", "--config", config, "--switch", "tor1", "--port", P2,
              "--service", "blue.example.com", check=False)  # fmt: skip
    assert res.returncode == 2 and "no manual attachment" in res.stderr


@needs_netconfd
@pytest.mark.parametrize(
    "args",
    [
        ["apply", "--switch", "tor1", "--port", "Ethernet1/1\nreload", "--service", "red"],
        ["apply", "--switch", "tor9", "--port", P1, "--service", "red.example.com"],
        ["apply", "--switch", "tor1", "--port", P1, "--service", "green"],
        ["audit", "--switch", "nope"],
        ["serve", "--advertise", "ftp://somewhere"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(config: str, args: list[str]) -> None:
    res = run(*args, "--config", config, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@needs_netconfd
def test_serve_subprocess_answers_and_stops_on_sigterm(config: str, sockdir: str) -> None:
    sock = f"{sockdir}/torshim.sock"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*TORSHIM, "serve", "--config", config, "--metrics", "", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            conn = pb_grpc.NetworkServiceStub(ch).Request(request("c1"), timeout=30)
        assert conn.context.ethernet_context.vlan_tag == 100
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not os.path.exists(sock)
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any("serving NetworkService" in line["msg"] for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
