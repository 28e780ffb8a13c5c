"""scripts/bench.py in its quick mode, so that it cannot rot: every section runs
end to end on small sizes and writes its results (no speed is asserted here:
targets live in docs/performance.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_runs_every_section(tmp_path):
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, ROOT / "scripts/bench.py", "--quick", "--results", results],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(results.read_text())
    assert report["quick"] is True
    fio_jobs = [r for r in report["data_path"] if "repofs_mib_s" in r]
    assert len({(r["image"], r["job"]) for r in fio_jobs}) == 12
    assert all(r["repofs_mib_s"] > 0 for r in fio_jobs)
    assert all(r["qsd_fuse_mib_s"] > 0 for r in fio_jobs if r["image"] == "qcow2")
    depths = [r for r in report["data_path"] if "repofs_qd16_to_qd1" in r]
    assert {(r["image"], r["job"]) for r in depths} == {
        (image, f"rand-{rw}-4k-qd1-vs-qd16")
        for image in ("raw", "qcow2-daemon")
        for rw in ("read", "write")
    }
    assert all(r["repofs_qd1_iops"] > 0 and r["repofs_qd16_iops"] > 0 for r in depths)
    assert report["copy"]["full_copy_s"] and report["copy"]["incremental_copy_s"] > 0
    operations = {(r["operation"], r["image"]) for r in report["latency"]}
    assert len(operations) == 9 and all(r["p50_ms"] > 0 for r in report["latency"])
    assert next(r for r in report["latency"] if r["operation"] == "live_snapshot")["writes"]
    assert report["long_step"]["snapshot"]["p99_ms"] > 0
    live = report["live_jobs"]
    assert live["merge_mib_s"] > 0 and live["flatten_mib_s"] > 0 and live["commit_mib_s"] > 0
    assert report["scale"][0]["images"] == 100 and report["scale"][0]["rss_mib"] > 0
    assert report["headers"]["qcow2_volumes"] == 101 and report["headers"]["first_check_s"] > 0
    assert [r["clone_ms"] > 0 for r in report["reflink"]["clone"]] == [True, True]
    assert report["reflink"]["snapshots"]["live"]["stall_p99_ms"] > 0
    native = {(r["storage"], r["image"], r["job"]): r["ratio_to_direct"] for r in report["native"]}
    assert len(native) == 7 and all(ratio > 0 for ratio in native.values())
    assert len(report["resume"]) == 1
    assert len(report["gluster"]["queue_depths"]) == 2
