"""`nsmgr serve` and the commands that drive it, as processes: request, list, close end to end;
one line and exit 2 for bad input; SIGTERM stops cleanly and connections outlive a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests.conftest import needs_root
from tests.nsmgr.node import REPO, SERVICE, FakeNode, Serve, ip, links

pytestmark = [needs_root, pytest.mark.netns]


def nsmgr(node: FakeNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nsmgr.cli", "--socket", node.socket, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def served(node: FakeNode) -> Iterator[Serve]:
    with Serve(node.write_config()) as s:
        s.start(node.socket)
        yield s


def test_request_list_close(node: FakeNode, served: Serve) -> None:
    before = node.shapes()
    pod = node.pod()
    r = nsmgr(
        node, "request", "--service", SERVICE, "--device", node.vfs[0], "--netns", pod,
        "--ifname", "net0", "--pod", "default/web-1/u1", "--label", "app=web", "-o", "json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["device"], doc["ifname"], doc["netns"], doc["state"]) == (
        node.vfs[0],
        "net0",
        pod,
        "attached",
    )
    assert doc["pod"] == {"namespace": "default", "name": "web-1", "uid": "u1"}
    assert doc["labels"] == {"app": "web"} and doc["addresses"] == ["10.10.0.2/24"]
    assert doc["mtu"] == 1400 and doc["generation"] == 1 and doc["pf"] == "pf0"
    assert "net0" in links(os.path.basename(pod))

    # --netns as a pid: the namespace of a process living in the pod
    sleeper = subprocess.Popen(["ip", "netns", "exec", os.path.basename(pod), "sleep", "60"])
    try:
        r = nsmgr(
            node, "request", "--service", "open.example.com", "--device", node.vfs[1],
            "--netns", str(sleeper.pid), "--ifname", "net1", "--id", "by-pid",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "by-pid" in r.stdout and "attached" in r.stdout  # the table
        assert "net1" in links(os.path.basename(pod))

        listed = nsmgr(node, "list", "-o", "yaml")
        assert listed.returncode == 0, listed.stderr
        conns = yaml.safe_load(listed.stdout)["connections"]
        assert {c["id"] for c in conns} == {doc["id"], "by-pid"}
        by_pid = next(c for c in conns if c["id"] == "by-pid")
        assert by_pid["netns"] == f"/proc/{sleeper.pid}/ns/net"
        table = nsmgr(node, "list")
        assert table.returncode == 0 and "2 connections" in table.stdout and "web-1" in table.stdout

        for cid in ("by-pid", doc["id"]):
            closed = nsmgr(node, "close", cid)
            assert closed.returncode == 0 and f"closed {cid}" in closed.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    assert json.loads(nsmgr(node, "list", "-o", "json").stdout) == {"connections": []}
    assert node.shapes() == before


def test_bad_input_is_one_line_and_exit_2(node: FakeNode, served: Serve) -> None:
    pod = node.pod()
    held = nsmgr(
        node, "request", "--service", "open.example.com", "--device", node.vfs[0], "--netns", pod
    )
    assert held.returncode == 0, held.stderr
    req = ["request", "--service", SERVICE, "--netns", pod, "--pod", "default/web-1"]
    vf1 = ["--device", node.vfs[1]]
    cases = {
        "no PCI device 0000:3b:09.0 on this node": [*req, "--device", "0000:3b:09.0"],
        "is held by connection": [*req, "--device", node.vfs[0]],
        "interface name 'way-too-long-name' is invalid": [*req, *vf1, "--ifname", "way-too-long-name"],
        "unknown network service nope.example.com": [
            "request", "--service", "nope.example.com", *vf1, "--netns", pod,
        ],
        "network namespace /run/netns/nsmtest-gone does not exist": [
            "request", "--service", SERVICE, *vf1, "--netns", "nsmtest-gone",
        ],
        "--pod 'web-1' is not NAMESPACE/NAME[/UID]": [*req[:-2], "--pod", "web-1", *vf1],
        "--label 'app' is not KEY=VALUE": [*req, *vf1, "--label", "app"],
        "no connection 'nope' on this node": ["close", "nope"],
        "invalid choice: 'xml'": ["list", "-o", "xml"],
    }  # fmt: skip
    for message, args in cases.items():
        r = nsmgr(node, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("nsmgr") and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert set(links(os.path.basename(pod))) == {"lo", "nsm0"}  # nothing changed


def test_unreachable_agent_is_one_line_and_exit_1(node: FakeNode) -> None:
    r = nsmgr(node, "list")
    assert r.returncode == 1
    assert r.stderr == f"nsmgr: error: cannot reach nsmgr at {node.socket}: is it running?\n"


def test_bad_config_stops_serve_with_one_line(node: FakeNode) -> None:
    path = os.path.join(node.root, "bad.yaml")
    with open(path, "w") as f:
        f.write("services: [{name: x, vlan: 9999}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "nsmgr.cli", "serve", "--config", path],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert (
        r.stderr
        == f"nsmgr: error: {path}: services.0.vlan: Input should be less than or equal to 4094\n"
    )


def test_sigterm_stops_cleanly_and_connections_outlive_a_restart(node: FakeNode) -> None:
    config = node.write_config()
    before = node.shapes()
    pod = node.pod()
    first = Serve(config).start(node.socket)
    try:
        r = nsmgr(
            node,
            "request",
            "--service",
            "open.example.com",
            "--device",
            node.vfs[2],
            "--netns",
            pod,
            "--id",
            "keep",
        )
        assert r.returncode == 0, r.stderr
        other = node.write_config(socket=node.socket + "2")  # same state dir, other socket
        with pytest.raises(AssertionError, match="another nsmgr is running on state dir"):
            Serve(other).start(node.socket + "2")
    finally:
        assert first.stop() == 0, first.log
    assert not os.path.exists(node.socket)
    assert "stopped; connections stay recorded" in first.log
    assert "nsm0" in links(os.path.basename(pod))  # a restart is not a detach
    with Serve(config) as second:
        second.start(node.socket)
        listed = json.loads(nsmgr(node, "list", "-o", "json").stdout)["connections"]
        assert [(c["id"], c["state"]) for c in listed] == [("keep", "attached")]
        assert nsmgr(node, "close", "keep").returncode == 0
    assert node.shapes() == before
    ip("link", "show", "vf2", ns=node.ns)


def test_metrics_and_readiness(node: FakeNode) -> None:
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = node.write_config(metrics={"address": "127.0.0.1", "port": port})
    with Serve(config) as served:
        served.start(node.socket)
        base = f"http://127.0.0.1:{port}"
        # readiness follows the socket by a moment (metrics start after it): poll, briefly
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert r.status == 200
        pod = node.pod()
        r = nsmgr(
            node,
            "request",
            "--service",
            "open.example.com",
            "--device",
            node.vfs[0],
            "--netns",
            pod,
        )
        assert r.returncode == 0, r.stderr
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'sriovnsm_nsmgr_operations_total{op="request",result="ok"} 1.0' in text
        assert 'sriovnsm_nsmgr_connections{state="attached"} 1.0' in text
        assert "sriovnsm_nsmgr_operation_seconds_bucket" in text
