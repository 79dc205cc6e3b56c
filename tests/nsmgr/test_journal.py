"""The journal: records survive as written, writes are atomic, locks exclude threads and
processes, and the crash hook kills right after a phase is durable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nsmgr.endpoint import EndpointContext, Route
from nsmgr.errors import JournalError
from nsmgr.journal import CRASH_ENV, FREE, Journal, VfRecord
from nsmgr.netlink import VfInfo
from nsmgr.pfside import VfSettings
from nsmgr.vfstate import HostLink, VfOriginal

PCI = "0000:3b:02.1"


def record(phase: str = "attached", generation: int = 3) -> VfRecord:
    original = VfOriginal(
        pci_address=PCI,
        pf_pci="0000:3b:00.0",
        pf_ifname="ens1f0",
        vf_index=1,
        driver="iavf",
        netdev=HostLink("ens1f0v1", 17, "02:00:00:00:00:01", 1500, False, ("enp59s2f1",), None),
        pf=VfInfo(1, "00:00:00:00:00:00", 0, 0, "802.1Q", True, False, 0, 0, "auto"),
    )
    ctx = EndpointContext(
        endpoint="local:myns",
        addresses=("10.0.0.2/24",),
        routes=(Route("10.1.0.0/16", "10.0.0.1"),),
        dns_servers=("10.0.0.53",),
        mtu=9000,
        vf=VfSettings(vlan=100, trust=True),
    )
    return VfRecord(
        pci_address=PCI,
        generation=generation,
        phase=phase,
        connection_id="c1",
        service="myns.example.com",
        netns="/run/netns/p1",
        netns_inode="inode://4/4026532000",
        ifname="nsm0",
        mechanism="KERNEL",
        pod={"namespace": "default", "name": "p1", "uid": "u1"},
        labels={"app": "x"},
        original=original,
        context=ctx,
        pf_status="applied",
        pf_applied=["vlan", "trust"],
        pod_ifindex=17,
    )


def test_round_trip(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    rec = record()
    j.write(rec)
    back = j.read(PCI)
    assert back is not None
    assert back.to_dict() == rec.to_dict()
    assert back.original == rec.original and back.context == rec.context
    records, problems = j.read_all()
    assert list(records) == [PCI] and problems == []
    assert oct(os.stat(j.path(PCI)).st_mode & 0o777) == "0o600"


def test_freed_keeps_only_the_generation(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.write(record().freed())
    back = j.read(PCI)
    assert back is not None
    assert (back.phase, back.generation, back.connection_id, back.original) == (FREE, 3, "", None)
    assert not back.busy


def test_a_torn_write_leaves_the_old_record(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.write(record(phase="attach:move"))
    with open(j.path(PCI) + ".tmp", "w") as f:  # a crash between write and rename
        f.write('{"version": 1, "pci_addr')
    records, problems = j.read_all()
    assert records[PCI].phase == "attach:move" and problems == []
    assert not os.path.exists(j.path(PCI) + ".tmp")


def test_unreadable_records_are_reported_by_vf(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.write(record())
    other = "0000:3b:02.2"
    Path(j.path(other)).write_text("{not json")
    Path(j.path("0000:3b:02.3")).write_text(json.dumps({**record().to_dict(), "phase": "dancing"}))
    records, problems = j.read_all()
    assert list(records) == [PCI]
    assert [p for p, _ in problems] == [other, "0000:3b:02.3"]
    assert "unreadable record" in problems[0][1] and "unknown phase 'dancing'" in problems[1][1]
    with pytest.raises(JournalError, match=r"0000:3b:02.2.json: unreadable record"):
        j.read(other)


def test_vf_lock_excludes_threads(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    inside: list[int] = []
    overlap: list[bool] = []

    def work(i: int) -> None:
        with j.vf_lock(PCI):
            overlap.append(bool(inside))
            inside.append(i)
            time.sleep(0.005)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [False] * 8


def test_vf_lock_excludes_other_processes(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    code = (
        "import sys, time; from nsmgr.journal import Journal\n"
        f"j = Journal({str(tmp_path)!r})\n"
        f"with j.vf_lock({PCI!r}):\n"
        "    print('locked', flush=True); time.sleep(0.3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with j.vf_lock(PCI):
            waited = time.monotonic() - start
    finally:
        proc.wait(10)
    assert waited > 0.1


def test_one_agent_per_state_dir(tmp_path: Path) -> None:
    a, b = Journal(str(tmp_path)), Journal(str(tmp_path))
    a.lock_agent()
    with pytest.raises(JournalError, match="another nsmgr is running on state dir"):
        b.lock_agent()
    a.unlock_agent()
    b.lock_agent()
    b.unlock_agent()


def test_crash_hook_kills_after_the_phase_is_durable(tmp_path: Path) -> None:
    code = (
        "from tests.nsmgr.test_journal import record; from nsmgr.journal import Journal\n"
        f"j = Journal({str(tmp_path)!r})\n"
        "j.write(record(phase='attach:endpoint'))\n"
        "j.write(record(phase='attach:move'))\n"
        "j.write(record(phase='attach:configure'))\n"
    )
    env = {**os.environ, CRASH_ENV: "attach:move"}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    assert res.returncode == -signal.SIGKILL
    back = Journal(str(tmp_path)).read(PCI)
    assert back is not None and back.phase == "attach:move"


def test_state_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match=r"^state dir .*/file/state: "):
        Journal(str(blocker / "state"))
