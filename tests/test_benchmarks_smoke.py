"""`python -m benchmarks` still runs and reports every figure. Timings are never asserted here: speed
targets live in the benchmarks' own output, where a slow CI machine is a figure, not a failure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.torshim.netconf_server import needs_netconfd

REPO = Path(__file__).resolve().parents[1]
METRICS = {
    "discovery.full_scan": "ms",
    "discovery.floor": "ms",
    "discovery.scan_to_floor": "x",
    "discovery.incremental_link_change": "ms",
    "discovery.incremental_vf_bind": "ms",
    "discovery.to_dict": "ms",
    "discovery.list_json": "ms",
    "deviceplugin.allocate": "ms",
    "deviceplugin.allocate_empty": "ms",
    "deviceplugin.allocate_ratio": "x",
    "deviceplugin.allocate_first": "ms",
    "deviceplugin.allocate_first_empty": "ms",
    "deviceplugin.allocate_first_ratio": "x",
    "deviceplugin.health_to_list": "ms",
    "deviceplugin.rss": "MB",
    "deviceplugin.rss_bare_grpc": "MB",
    "deviceplugin.rss_ratio": "x",
    "lab.demo": "ms",
}
WITH_GOAL = {
    "discovery.full_scan",
    "deviceplugin.allocate_ratio",
    "deviceplugin.allocate_first_ratio",
    "deviceplugin.health_to_list",
    "deviceplugin.rss",
}
# Measured only where netconfd and the OpenConfig modules are (../shared/yang beside the clone).
if not needs_netconfd.args[0]:
    METRICS |= {"nsm.request": "ms", "nsm.request_ratio": "x"}
    WITH_GOAL |= {"nsm.request"}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def test_quick_run_reports_every_metric_as_json() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "-o", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr  # 0 even when a goal is missed
    doc = json.loads(res.stdout)  # stdout is the JSON document and nothing else
    assert doc["quick"] is True
    by_name = {m["name"]: m for m in doc["metrics"]}
    assert set(METRICS) <= set(by_name)
    for name, unit in METRICS.items():
        m = by_name[name]
        assert m["unit"] == unit, name
        assert _number(m["median"]), name
        assert m["p90"] is None or _number(m["p90"]), name
        assert m["p99"] is None or _number(m["p99"]), name
        assert m["verdict"] in ("OK", "MISSED", "-"), name
        assert isinstance(m["runs"], int) and m["runs"] > 0, name
    assert by_name["discovery.full_scan"]["vfs"] == 1024
    for name in WITH_GOAL:
        assert by_name[name]["verdict"] != "-", name  # it has a goal
    assert by_name["discovery.floor"]["io_ops_total"] > 1024  # the floor replayed real I/O
    for name in ("discovery.incremental_link_change", "discovery.incremental_vf_bind"):
        assert all(isinstance(n, int) for n in by_name[name]["nic_reads_per_event"]), name
        assert isinstance(by_name[name]["full_scans"], int), name
    # the device plugin: the daemon's Allocate and its tail, on the 1,024-VF host
    for name in ("deviceplugin.allocate", "deviceplugin.allocate_first"):
        assert _number(by_name[name]["p99"]), name
        assert _number(by_name[f"{name}_empty"]["p99"]), name
    assert by_name["deviceplugin.allocate"]["vfs"] == 1024
    health = by_name["deviceplugin.health_to_list"]
    assert _number(health["p99"])
    assert health["list_devices"] == 384 and health["flipped_devices"] == 96
    assert isinstance(health["stale_lists"], int)
    rss = by_name["deviceplugin.rss"]
    assert rss["vfs"] == 1024 and rss["pools"] == 3 and isinstance(rss["events"], bool)
    assert rss["vm_rss_kb"] > by_name["deviceplugin.rss_bare_grpc"]["vm_rss_kb"] > 0
    assert doc["missed"] == [m["name"] for m in doc["metrics"] if m["verdict"] == "MISSED"]
    lab = by_name["lab.demo"]
    if "skipped" not in lab["label"]:  # root with sshd: the demo ran, with its phases and ratio
        assert lab["failed_runs"] == 0 and lab["verdict"] != "-"
        assert set(lab["phases_s"]) >= {"lab", "components", "connect", "ping", "total"}
        assert _number(by_name["lab.demo_to_bare"]["median"])
