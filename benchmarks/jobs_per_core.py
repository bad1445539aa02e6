"""Sweeps on a CPU: one job using every core, or one single-threaded job per core?

Runs the model of speed.py (784-400-20, batch 128, Fashion-MNIST) for the same number of steps
  (1) as one vae-train job with OMP_NUM_THREADS = cores, then
  (2) as `cores` vae-train jobs at once, each with OMP_NUM_THREADS=1 (what a joblib sweep does),
and reports the training samples per second of the whole machine in each case (from each job's own
timer around trainer.fit) and the wall time from launch to the last job's exit (start-up included,
as a sweep pays it), interleaved over repeats; medians.

    python benchmarks/jobs_per_core.py [--steps 1000] [--repeats 3] [--data-dir data] [--extra OVERRIDES...]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from speed import BATCH, vae_train_cmd


def jobs(n: int, threads: int, steps: int, data_dir: str, extra: list[str]) -> tuple[float, float]:
    """n concurrent vae-train jobs of `threads` threads each: (samples/s of the machine, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(n)]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                vae_train_cmd(data_dir, r, steps, "cpu", extra),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for r in runs
        ]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a vae-train job failed; run its command by hand to see why")
        wall = time.perf_counter() - start
        seconds = [json.loads((r / "timing.json").read_text())["train_seconds"] for r in runs]
    # Each job trains steps * BATCH samples in its own time; the machine's rate is their sum.
    return sum(steps * BATCH / s for s in seconds), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=os.environ.get("VAE_CLI_DATA", "data"))
    p.add_argument("--extra", nargs="*", default=[], help="extra vae-train overrides")
    args = p.parse_args()
    cores = os.cpu_count()

    jobs(1, cores, 1, args.data_dir, [])  # unpack the data once
    one, many = [], []
    for _ in range(args.repeats):
        one.append(jobs(1, cores, args.steps, args.data_dir, args.extra))
        many.append(jobs(cores, 1, args.steps, args.data_dir, args.extra))
    rate = {
        "one_job_all_threads": statistics.median(r for r, _ in one),
        "one_job_per_core": statistics.median(r for r, _ in many),
    }
    # Wall time per job's worth of work: `cores` jobs did `cores` times the work of one.
    wall = {
        "one_job_all_threads": statistics.median(w for _, w in one),
        "one_job_per_core": statistics.median(w for _, w in many) / cores,
    }
    print(
        json.dumps(
            {
                "cores": cores,
                "steps": args.steps,
                "repeats": args.repeats,
                "samples_per_s": {k: round(v) for k, v in rate.items()},
                "ratio_per_core/all_threads": round(rate["one_job_per_core"] / rate["one_job_all_threads"], 3),
                "wall_s_per_job": {k: round(v, 2) for k, v in wall.items()},
                "wall_ratio": round(wall["one_job_all_threads"] / wall["one_job_per_core"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
