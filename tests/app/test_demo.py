"""`cifer demo` end to end on a real localnet (loopback; every process stopped)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cifer.app.demo import DemoConfig, run_demo


def _nodes_running(workdir: Path) -> bool:
    out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
    return bool(out.stdout.strip())


def test_demo_rejects_sign_flippers_and_writes_a_report(tmp_path: Path) -> None:
    cfg = DemoConfig(attack="sign_flip", rounds=3, epochs=2)
    report = tmp_path / "report.html"
    res = run_demo(cfg, workdir=tmp_path / "w", report=report, on_status=lambda s: None)
    assert [r.round for r in res.rows] == [0, 1, 2]
    for row in res.rows:
        assert sorted(row.rejected) == [0, 1, 2]  # the Byzantine clients are c0..c2
        assert sorted(row.accepted) == list(range(3, 10))
    last = res.rows[-1].reputation
    assert all(last[i][0] == "Unreliable" for i in range(3))
    assert res.final_accuracy > res.initial_accuracy + 0.3
    assert res.final_accuracy > res.fedavg_attacked  # FedAvg is hurt by sign flipping
    assert res.provenance["contributors"] and len(res.provenance["round_models"]) == 3
    text = report.read_text()
    assert "Cifer demo: job" in text and res.provenance["asset_id"] in text
    assert not _nodes_running(tmp_path / "w")
