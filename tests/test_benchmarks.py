"""The benchmarks run end to end at small sizes (their numbers are measured by hand, not here)."""

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


def test_feature_extraction_benchmark_encodes_images():
    from benchmarks.feature_extraction import benchmark

    result = benchmark(num_images=8, image_size=16, preset="tiny", batch_size=4)
    assert result["num_images"] == 8 and result["images_per_second"] > 0 and result["embedding_dim"] == 128


def test_training_speed_benchmark_times_every_loop_through_the_training_step(tmp_path, monkeypatch, capsys):
    from benchmarks.train_speed import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    main(["--batch-size", "8", "--rounds", "1", "--steps", "1"])
    printed = capsys.readouterr().out
    for loop in ("bare", "train.py", "trainer", "clip", "psd previous_epoch", "psd ema"):
        assert re.search(rf"^  {re.escape(loop)} +median +[0-9.]+ s/step", printed, re.M), loop
