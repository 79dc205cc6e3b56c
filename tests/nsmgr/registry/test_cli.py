"""`nsm-registry` as a user runs it: `serve` as a process, `list`/`show` against it, a restart that
keeps the state (SQLite), expiry with a short TTL, /metrics and /readyz, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from nsmgr.registry.cli import main
from nsmgr.registry.client import RegistryClient
from sriov_nsm_wire.registry import registry_pb2 as pb
from tests.nsmgr.registry.helpers import (
    NSM_REGISTRY,
    cli,
    free_port,
    registry_process,
    short_tmpdir,
    write_config,
)


def _one_line_error(res: object, code: int, *fragments: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    err = res.stderr  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1 and err.startswith("nsm-registry"), err
    assert " error: " in err, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


def test_serve_list_show_restart() -> None:
    with short_tmpdir() as d:
        sock = f"unix://{d}/reg.sock"
        metrics = free_port()
        cfg = write_config(
            f"{d}/r.yaml", "example.com", d, server=f"{{metrics: '127.0.0.1:{metrics}'}}"
        )
        with registry_process(cfg, sock) as proc:
            with RegistryClient(sock) as r:
                r.register_service(pb.NetworkService(name="myns.example.com", payload="ETHERNET"))
                m = pb.NetworkServiceEndpoint(
                    name="torshim",
                    network_service_names=["myns.example.com"],
                    url="tcp://10.0.0.5:5001",
                )
                m.network_service_labels["myns.example.com"].labels["zone"] = "a"
                r.register_endpoint(m)
                short = pb.NetworkServiceEndpoint(
                    name="short-lived", network_service_names=["x"], url="unix:///run/x.sock"
                )
                short_until = time.time() + 2.5  # outlives the checks below on a busy machine
                short.expiration_time.FromMicroseconds(int(short_until * 1e6))
                r.register_endpoint(short)

            res = cli("list", "--registry", sock)
            assert res.returncode == 0, res.stderr
            for text in (
                "2 endpoints",
                "torshim",
                "tcp://10.0.0.5:5001",
                "myns.example.com: zone=a",
                "1 network services",
                "ETHERNET",
            ):
                assert text in res.stdout
            res = cli("list", "--registry", sock, "--endpoints", "-o", "json")
            doc = json.loads(res.stdout)
            assert list(doc) == ["endpoints"]
            assert [e["name"] for e in doc["endpoints"]] == ["short-lived", "torshim"]
            assert doc["endpoints"][1]["network_service_labels"] == {
                "myns.example.com": {"labels": {"zone": "a"}}
            }
            res = cli("list", "--registry", sock, "--services", "-o", "yaml")
            assert yaml.safe_load(res.stdout) == {
                "services": [{"name": "myns.example.com", "payload": "ETHERNET"}]
            }
            res = cli("show", "torshim", "--registry", sock, "-o", "json")
            assert json.loads(res.stdout)["endpoint"]["url"] == "tcp://10.0.0.5:5001"
            res = cli("show", "myns.example.com", "--config", cfg)  # wrong: config's listen
            _one_line_error(res, 1, "cannot reach the registry at 127.0.0.1:5002")
            res = cli("show", "torshim", "--registry", sock)
            assert "endpoint torshim" in res.stdout and "expires in" in res.stdout

            # the short registration is gone once its time passes, in list as in show
            time.sleep(max(short_until - time.time() + 0.1, 0))
            res = cli("list", "--registry", sock, "--endpoints", "-o", "json")
            assert [e["name"] for e in json.loads(res.stdout)["endpoints"]] == ["torshim"]
            _one_line_error(
                cli("show", "short-lived", "--registry", sock),
                2,
                "no endpoint or network service named 'short-lived'",
            )

            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5) as resp:
                assert resp.status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert (
                'nsm_registry_requests_total{code="OK",method="Register",registry="nse"} 2.0'
                in text
            )
            assert "nsm_registry_expired_total 1.0" in text
            assert "nsm_registry_endpoints 1.0" in text
            assert proc.stop() == 0  # SIGTERM: a clean exit...
            assert not os.path.exists(sock.removeprefix("unix://"))  # ...that removes its socket
            assert "stopped in" in proc.output()

        # a new process on the same store: the state survived
        with registry_process(cfg, sock):
            res = cli("list", "--registry", sock, "-o", "json")
            doc = json.loads(res.stdout)
            assert [s["name"] for s in doc["services"]] == ["myns.example.com"]
            assert [e["name"] for e in doc["endpoints"]] == ["torshim"]


def _main_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, *fragments: str
) -> None:
    """main() in this process (quicker than a subprocess for what fails before serving)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    _one_line_error(SimpleNamespace(returncode=rc, stdout=out, stderr=err), code, *fragments)


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ("server: {}\n", ["domain: required"]),
        ("domain: 'ex ample'\n", ["domain: invalid domain"]),
        (
            "domain: x.test\nregistration: {default_ttl: 700}\n",
            ["registration.default_ttl: exceeds"],
        ),
        ("domain: x.test\nstore: {backend: etcd}\n", ["store.backend:"]),
        ("domain: x.test\ndns: {nameservers: [dns.google]}\n", ["dns.nameservers.0:"]),
        ("domain: x.test\nproxy: {pnsmgr_url: '10.0.0.1:5004'}\n", ["proxy.pnsmgr_url: invalid"]),
        ("domain: x.test\nserver: {listen: 'unix://rel.sock'}\n", ["server.listen: unix://"]),
        ("domain: x.test\nbogus: 1\n", ["bogus: Extra inputs are not permitted"]),
        ("domain: [\n", ["not valid YAML or JSON"]),
    ],
)
def test_serve_refuses_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config, encoding="utf-8")
    _main_error(capsys, ["serve", "--config", str(path)], 2, f"{path}: ", *fragments)


def test_bad_invocations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _main_error(capsys, ["serve", "--config", str(tmp_path / "missing.yaml")], 2, "No such file")
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("domain: x.test\n", encoding="utf-8")
    _main_error(capsys, ["serve", "--config", str(cfg), "--listen", "nowhere"], 2, "--listen:")
    _main_error(capsys, ["list", "-o", "xml"], 2, "invalid choice: 'xml'")
    _main_error(capsys, ["list", "--registry", "unix://x"], 2, "--registry: unix://")
    port = free_port()
    _main_error(
        capsys,
        ["list", "--registry", f"127.0.0.1:{port}", "--timeout", "1"],
        1,
        f"cannot reach the registry at 127.0.0.1:{port}",
    )
    # and once as a process, as a user sees it
    res = cli("serve", "--config", str(tmp_path / "missing.yaml"))
    _one_line_error(res, 2, "missing.yaml: No such file or directory")


def test_kubernetes_store_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text("domain: x.test\nstore: {backend: kubernetes}\nserver: {metrics: ''}\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config, and not in a pod
    res = subprocess.run(
        [*NSM_REGISTRY, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("nsm-registry: error: Kubernetes API: no in-cluster config and no kubeconfig")
    )
