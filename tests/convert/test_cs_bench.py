"""scripts/bench_convert.py on a few thousand particles (.cs direction): it runs, prints
its JSON (wall and CPU seconds, min and median of the repeats, peak memory) and the
.cs round trip it checks comes back within float32 rounding. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench_convert.py"


@pytest.mark.slow
def test_bench_convert_cs_runs_and_round_trips():
    argv = [sys.executable, str(BENCH), "--no-star", "--particles", "3000", "--repeats", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(done.stdout)
    assert result["particles"] == 3000 and result["cs_bytes"] > 3000 * 100
    for step in ("cs_write", "cs_read"):
        assert "error" not in result[step], result[step]
        for clock in ("seconds", "cpu_seconds"):
            times = result[step][clock]
            assert len(times["runs"]) == 2 and times["min"] <= times["median"]
        assert result[step]["peak_rss_mb"] >= result[step]["rss_before_mb"] > 0
    errors = result["cs_read"]["roundtrip_max_abs_error"]
    for name in ("defocus_u", "defocus_v", "ctf_fit_resolution", "ctf_fit_score", "phase_shift"):
        assert errors[name] == 0.0, name  # float32 in, float32 in the .cs
    assert errors["shift_x"] < 1e-5 and errors["defocus_angle"] < 1e-4
    # float32 poses; RELION's Euler decomposition rounds tilt within 4.4e-4° of 0 or 180°
    assert errors["rotation_deg"] < 5e-4
    assert set(result["targets_met"]["cpu_min"]) == {"cs_write", "cs_read"}
