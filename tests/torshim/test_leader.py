"""Leader election: the elector on FakeLeases with a fake clock, the adapter through the real
kubernetes client against a loopback stand-in for the API server, the daemon as a standby and as
the leader over real gRPC, and `torshim serve`'s flags."""

from __future__ import annotations

import json
import random
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from tests.torshim.shim_helpers import write_config
from torshim import cli, ops
from torshim.config import load_config
from torshim.daemon import Daemon
from torshim.leader import (
    FakeLeases,
    LeaderElector,
    LeaseAdapter,
    LeaseConflict,
    LeaseError,
    LeaseRecord,
)

LEASE = "torshim-leader"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class View:
    """One pod's path to the shared leases, which can be cut (its API server unreachable) and
    can let someone else write between its read and its write."""

    def __init__(self, leases: FakeLeases) -> None:
        self.leases = leases
        self.down = False
        self.before_write: Any = None

    def _check(self) -> None:
        if self.down:
            raise LeaseError("connection refused")

    def get(self, name: str) -> LeaseRecord | None:
        self._check()
        return self.leases.get(name)

    def create(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        self._check()
        return self.leases.create(name, rec)

    def replace(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.before_write is not None:
            self.before_write()
        return self.leases.replace(name, rec)


def elector(leases: Any, who: str, clock: Clock, **kw: Any) -> LeaderElector:
    return LeaderElector(leases, LEASE, who, duration=15, renew_every=5.0, clock=clock, **kw)


# -- the election ---------------------------------------------------------------------------------


def test_acquires_a_free_lease_and_renews_it() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock)
    assert a.step() and a.leading and a.holder == "a"
    first = leases.objects[LEASE]
    assert (first.holder, first.duration, first.transitions) == ("a", 15, 0)
    for _ in range(10):  # renewals keep it, long past one lease duration
        clock.now += 5
        assert a.step() and a.leading
    rec = leases.objects[LEASE]
    assert rec.renew_time == clock.now and rec.acquire_time == first.acquire_time
    assert rec.transitions == 0 and int(rec.resource_version or 0) == 11


def test_respects_a_live_holder_and_takes_over_an_expired_one() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.step()
    clock.now += 14.9
    assert not b.step() and b.holder == "a"  # live: renewed 14.9 s ago, 15 s lease
    assert not a.leading  # but a, not renewed for 10 s, writes no more
    clock.now += 0.2
    assert b.step() and b.leading  # expired
    rec = leases.objects[LEASE]
    assert (rec.holder, rec.transitions) == ("b", 1)
    assert not a.step() and a.lost and a.holder == "b"


def test_a_restarted_holder_takes_its_own_lease_back() -> None:
    leases, clock = FakeLeases(), Clock()
    assert elector(leases, "a", clock).step()
    clock.now += 3
    again = elector(leases, "a", clock)  # same pod name after a container restart
    assert again.step() and leases.objects[LEASE].transitions == 0


def test_loses_when_a_conflict_shows_another_holder() -> None:
    leases, clock = FakeLeases(), Clock()
    view = View(leases)
    a = elector(view, "a", clock)
    assert a.step()

    def b_writes() -> None:  # between a's read and a's write
        rec = leases.objects[LEASE]
        leases.replace(LEASE, LeaseRecord("b", clock.now, clock.now, 15, 1, rec.resource_version))

    view.before_write = b_writes
    clock.now += 5
    assert not a.step() and a.lost and a.holder == "b"


def test_a_conflict_with_ourselves_still_holding_is_retried() -> None:
    leases, clock = FakeLeases(), Clock()
    view = View(leases)
    a = elector(view, "a", clock)
    assert a.step()

    def touch() -> None:  # someone edits the lease (kubectl), the holder stays a
        view.before_write = None
        leases.replace(LEASE, leases.objects[LEASE])

    view.before_write = touch
    clock.now += 5
    assert a.step() and not a.lost  # still within the deadline
    clock.now += 5
    assert a.step() and leases.objects[LEASE].renew_time == clock.now


def test_loses_when_renewals_fail_past_the_deadline() -> None:
    leases, clock = FakeLeases(), Clock()
    view = View(leases)
    a = elector(view, "a", clock)
    assert a.step()
    view.down = True
    clock.now += 5
    assert a.step() and a.time_left() == 5  # one failed renewal is survived
    clock.now += 4.9
    assert a.leading
    clock.now += 0.1
    assert not a.leading  # 10 s without renewal: stopped before the lease (15 s) can expire
    assert not a.step() and a.lost
    view.down = False
    clock.now += 1
    assert a.step()  # nobody took it meanwhile: ours again (the daemon would have restarted)


def test_release_hands_over_at_once() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.step() and not b.step()
    a.release()
    assert not a.leading and leases.objects[LEASE].holder is None
    assert b.step() and leases.objects[LEASE].transitions == 1


def test_standby_survives_an_unreachable_api() -> None:
    view, clock = View(FakeLeases()), Clock()
    view.down = True
    b = elector(view, "b", clock)
    assert not b.step() and not b.lost


def racing(view: View, other: LeaderElector) -> Any:
    def hook() -> None:
        view.before_write = None  # once
        other.step()

    return hook


@pytest.mark.parametrize("seed", range(20))
def test_two_electors_never_lead_together(seed: int) -> None:
    rnd = random.Random(seed)
    leases, clock = FakeLeases(), Clock()
    views = [View(leases), View(leases)]
    pods = [elector(views[0], "a", clock), elector(views[1], "b", clock)]
    leaders = []
    for n in range(3000):
        i = rnd.randrange(2)
        roll = rnd.random()
        if roll < 0.03:
            views[i].down = not views[i].down
        elif roll < 0.06:  # the other steps between this one's read and its write
            views[i].before_write = racing(views[i], pods[1 - i])
        elif roll < 0.5:
            clock.now += rnd.uniform(0, 6)
        else:
            pods[i].step()
        assert not (pods[0].leading and pods[1].leading), f"step {n}: two leaders"
        now = [p.identity for p in pods if p.leading]
        if now and (not leaders or leaders[-1] != now[0]):
            leaders.append(now[0])
    assert len(leaders) > 2  # leadership did move back and forth


def test_rejects_timing_that_cannot_work() -> None:
    from torshim.errors import ConfigError

    with pytest.raises(ConfigError, match="--renew-every"):
        LeaderElector(FakeLeases(), LEASE, "a", duration=5, renew_every=5)


# -- the adapter, through the kubernetes client ---------------------------------------------------

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/"


class FakeApiServer:
    """Leases over HTTP on loopback, answered as the API server does (resourceVersion, 404,
    409 with a Status); every request is recorded as (method, path)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.requests: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, code: int, reason: str) -> None:
                self._reply(
                    code, {"kind": "Status", "status": "Failure", "code": code, "reason": reason}
                )

            def _handle(self) -> None:
                path = self.path.split("?")[0]
                api.requests.append((self.command, path))
                if api.fail_with:
                    return self._status(api.fail_with, "InternalError")
                assert path.startswith(PREFIX), path
                ns, kind, *rest = path.removeprefix(PREFIX).split("/")
                assert kind == "leases"
                body = None
                if self.command in ("POST", "PUT"):
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    assert body["spec"]["renewTime"][19] == "."  # MicroTime: six digits
                if self.command == "GET":
                    got = api.objects.get((ns, rest[0]))
                    return self._reply(200, got) if got else self._status(404, "NotFound")
                assert body is not None
                key = (ns, body["metadata"]["name"])
                have = api.objects.get(key)
                if self.command == "POST" and have:
                    return self._status(409, "AlreadyExists")
                if self.command == "PUT":
                    if not have:
                        return self._status(404, "NotFound")
                    if (
                        body["metadata"].get("resourceVersion")
                        != have["metadata"]["resourceVersion"]
                    ):
                        return self._status(409, "Conflict")
                api.version += 1
                body["metadata"]["resourceVersion"] = str(api.version)
                api.objects[key] = body
                self._reply(201 if self.command == "POST" else 200, body)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def kubeconfig(self, tmp: Path) -> str:
        path = tmp / "kubeconfig"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u"}}],
            "current-context": "c",
        }
        path.write_text(json.dumps(doc))
        return str(path)


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    s = FakeApiServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_adapter_speaks_the_lease_api(apiserver: FakeApiServer, tmp_path: Path) -> None:
    leases = LeaseAdapter("sriov-nsm", kubeconfig=apiserver.kubeconfig(tmp_path))
    assert leases.get(LEASE) is None
    rec = LeaseRecord("a", 1_700_000_000.0, 1_700_000_000.25, 15)  # a whole second, too
    made = leases.create(LEASE, rec)
    assert made.resource_version == "1" and made.holder == "a"
    assert made.acquire_time == pytest.approx(rec.acquire_time, abs=1e-5)
    assert made.renew_time == 1_700_000_000.25 and made.duration == 15
    with pytest.raises(LeaseConflict):
        leases.create(LEASE, rec)
    got = leases.get(LEASE)
    assert got == made
    newer = leases.replace(LEASE, LeaseRecord("b", 1.0e9, 1.0e9, 15, 1, got.resource_version))
    assert (newer.holder, newer.transitions, newer.resource_version) == ("b", 1, "2")
    with pytest.raises(LeaseConflict):  # the version read before b wrote
        leases.replace(LEASE, got)
    apiserver.fail_with = 500
    with pytest.raises(LeaseError, match="HTTP 500"):
        leases.get(LEASE)
    path = f"{PREFIX}sriov-nsm/leases"
    assert set(apiserver.requests) == {
        ("GET", f"{path}/{LEASE}"),
        ("POST", path),
        ("PUT", f"{path}/{LEASE}"),
    }


def test_adapter_reports_an_api_server_that_is_not_there(tmp_path: Path) -> None:
    s = FakeApiServer()
    config = s.kubeconfig(tmp_path)
    s.httpd.shutdown()
    s.httpd.server_close()
    leases = LeaseAdapter("sriov-nsm", kubeconfig=config, timeout=1)
    with pytest.raises(LeaseError, match="get lease sriov-nsm/torshim-leader"):
        leases.get(LEASE)


def test_an_election_through_the_adapter(apiserver: FakeApiServer, tmp_path: Path) -> None:
    config, clock = apiserver.kubeconfig(tmp_path), Clock()
    a = elector(LeaseAdapter("ns", kubeconfig=config), "a", clock)
    b = elector(LeaseAdapter("ns", kubeconfig=config), "b", clock)
    assert a.step() and not b.step()
    clock.now += 16
    assert b.step() and not a.step() and a.lost


# -- the daemon -----------------------------------------------------------------------------------

MAP = [{"node": "node-a", "pf": "ens1f0", "switch": "tor1", "port": "Ethernet1/1"}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shim_config(tmp_path: Path) -> Iterator[str]:
    """One switch nobody answers for (reconcile fails fast and does not hold readiness back)."""
    sockdir = tempfile.mkdtemp(prefix="tsl")  # unix socket paths must stay under 108 bytes
    (tmp_path / "pw").write_text("secret\n")
    switch = {
        "name": "tor1",
        "driver": "openconfig",
        "host": "127.0.0.1",
        "port": closed_port(),
        "username": "admin",
        "password_file": str(tmp_path / "pw"),
        "host_key_checking": False,
        "connect_timeout": 1,
    }
    server = {"listen": f"unix://{sockdir}/torshim.sock", "metrics": "127.0.0.1:0"}
    path, _ = write_config(tmp_path, switch, MAP, server=server)
    yield path
    shutil.rmtree(sockdir, ignore_errors=True)


def http(d: Daemon, path: str) -> tuple[int, str]:
    assert d.http is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.http.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ask(d: Daemon) -> grpc.RpcError:
    req = pb.NetworkServiceRequest(
        connection=pb.Connection(id="c1", network_service="red.example.com"),
        mechanism_preferences=[
            pb.Mechanism(cls="LOCAL", type="KERNEL", parameters={"nodeName": "node-a"})
        ],
    )
    with grpc.insecure_channel(d.listen) as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.NetworkServiceStub(ch).Request(req, timeout=5)
    return e.value


def held_by(leases: FakeLeases, who: str | None) -> None:
    now = time.time()
    rec = leases.objects.get(LEASE)
    new = LeaseRecord(who, now, now, 15, 0, rec.resource_version if rec else None)
    (leases.replace if rec else leases.create)(LEASE, new)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_standby_refuses_then_leads_when_the_lease_frees(shim_config: str) -> None:
    cfg = load_config(shim_config)
    cfg = cfg.model_copy(
        update={
            "registry": cfg.registry.model_copy(update={"url": f"tcp://127.0.0.1:{closed_port()}"})
        }
    )
    leases = FakeLeases()
    held_by(leases, "torshim-other")
    el = LeaderElector(leases, LEASE, "torshim-me", duration=2, renew_every=0.1)
    d = Daemon(cfg, elector=el)
    d.start()
    try:
        wait_for(lambda: el.holder == "torshim-other")
        e = ask(d)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert e.details() == "standby: the leader is torshim-other"
        assert http(d, "/readyz") == (200, "ok\n") and http(d, "/healthz")[0] == 200
        assert "torshim_leader 0.0" in http(d, "/metrics")[1]
        assert (
            'torshim_requests_total{code="UNAVAILABLE",op="Request"} 1.0' in http(d, "/metrics")[1]
        )
        # nothing opened, nothing registered
        assert d.store is None and d.shim is None and d.registrar is None
        assert not Path(cfg.store.path).exists()

        held_by(leases, None)  # the leader released it
        assert d.leading.wait(5) and d.ready.wait(10)
        assert leases.objects[LEASE].holder == "torshim-me"
        assert ask(d).code() == grpc.StatusCode.INVALID_ARGUMENT  # the shim answers now
        assert "torshim_leader 1.0" in http(d, "/metrics")[1]
        assert http(d, "/readyz")[0] == 200
        assert d.store is not None and Path(cfg.store.path).exists() and d.registrar is not None
    finally:
        d.stop()
    assert leases.objects[LEASE].holder is None  # released on a clean stop
    assert not d.lost


def test_leader_stops_when_another_takes_the_lease(shim_config: str) -> None:
    leases = FakeLeases()
    el = LeaderElector(leases, LEASE, "torshim-me", duration=2, renew_every=0.1)
    d = Daemon(load_config(shim_config), elector=el)
    d.start()
    try:
        assert d.leading.wait(5)
        held_by(leases, "torshim-other")  # e.g. written while this one's renewals were failing
        wait_for(d._stop.is_set)
        assert d.lost and el.lost
    finally:
        d.stop()
    assert leases.objects[LEASE].holder == "torshim-other"  # not released: not ours
    assert d.leader_gauge._value.get() == 0


def test_without_election_it_leads_at_once(shim_config: str) -> None:
    d = Daemon(load_config(shim_config))
    d.start()
    try:
        assert d.leading.is_set() and d.ready.wait(10)
        assert ask(d).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "torshim_leader 1.0" in http(d, "/metrics")[1]
    finally:
        d.stop()


# -- the command line -----------------------------------------------------------------------------


def run_serve(monkeypatch: pytest.MonkeyPatch, capsys: Any, *args: str) -> tuple[int, str]:
    code = cli.main(["serve", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--leader-elect", "--lease-name", LEASE], "set POD_NAMESPACE or --lease-namespace"),
        (["--leader-elect"], "--leader-elect needs --lease-name"),
        (
            [
                "--leader-elect",
                "--lease-name",
                LEASE,
                "--lease-namespace",
                "x",
                "--renew-every",
                "20",
            ],
            "--renew-every (20 s) must be above 0 and below --lease-duration (15 s)",
        ),
    ],
)
def test_serve_flags_are_checked_first(
    shim_config: str, monkeypatch: pytest.MonkeyPatch, capsys: Any, args: list[str], message: str
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    code, err = run_serve(monkeypatch, capsys, "--config", shim_config, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("torshim: error: ")


def test_serve_outside_a_cluster_needs_kubeconfig(
    shim_config: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "sriov-nsm")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, err = run_serve(
        monkeypatch, capsys, "--config", shim_config, "--leader-elect", "--lease-name", LEASE
    )
    assert code == 2 and err.count("\n") == 1 and "--kubeconfig" in err


def test_serve_exits_non_zero_when_leadership_is_lost(
    shim_config: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    leases = FakeLeases()
    monkeypatch.setattr(ops, "LeaseAdapter", lambda namespace, **kw: leases)
    monkeypatch.setenv("POD_NAMESPACE", "sriov-nsm")
    monkeypatch.setenv("POD_NAME", "torshim-me")

    def steal() -> None:
        wait_for(lambda: LEASE in leases.objects, 10)
        held_by(leases, "torshim-other")

    t = threading.Thread(target=steal, daemon=True)
    t.start()
    code, _ = run_serve(
        monkeypatch,
        capsys,
        "--config",
        shim_config,
        "--leader-elect",
        "--lease-name",
        LEASE,
        "--lease-duration",
        "2",
        "--renew-every",
        "0.1",
    )
    t.join(5)
    assert code == 1
