"""The data-loading benchmark runs end to end on a few images (its numbers are measured by hand, not here)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_data_loading_benchmark_reads_both_sources_with_and_without_workers(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.data_loading", "--samples", "48", "--batch-size", "16",
                           "--workers", "0", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rates = re.findall(r"^  (webdataset shards|CSV of files) +(\d) workers: +([0-9.]+) samples/s", done.stdout, re.M)
    assert [(source, workers) for source, workers, _ in rates] == [
        ("webdataset shards", "0"), ("webdataset shards", "1"), ("CSV of files", "0"), ("CSV of files", "1")]
    assert all(float(rate) > 0 for _, _, rate in rates)
    assert re.search(r"consumes \d+ samples/s: \d+ to \d+ cores", done.stdout)
