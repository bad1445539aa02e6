"""Test negative log-likelihood on Fashion-MNIST, as the literature reports it.

Trains `vae-train experiment=fashion_mnist_vae` (plus any overrides), then scores its best checkpoint with
`vae-eval iw_samples=K` (k = 5000 by default, as in the reference results) and prints one Markdown row:
test nll_iw with its standard error, test ELBO, active units, epochs, wall times and the machine.

    python benchmarks/fashion_mnist_nll.py [--k 5000] [--append docs/benchmarks-history.md] [--run-dir DIR] \
        [-- OVERRIDES...]
    python benchmarks/fashion_mnist_nll.py -- model=conv 'model.hidden_dims=[32,64,128]' model.activation=relu \
        trainer.accelerator=gpu
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def machine(accelerated: bool) -> str:
    if accelerated:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--run-dir", default=f"outputs/bench/fashion_mnist_vae-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--append", help="append the row to this Markdown file (e.g. docs/benchmarks-history.md)")
    p.add_argument("overrides", nargs="*", help="vae-train overrides, after --")
    args = p.parse_args()
    run_dir = Path(args.run_dir)

    train = [
        str(BIN / "vae-train"),
        "experiment=fashion_mnist_vae",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    subprocess.run(train, check=True)
    start = time.perf_counter()
    subprocess.run([str(BIN / "vae-eval"), f"ckpt_path={run_dir}", f"iw_samples={args.k}"], check=True)
    eval_seconds = time.perf_counter() - start

    m = json.loads((run_dir / "metrics.json").read_text())
    t = json.loads((run_dir / "timing.json").read_text())
    e = json.loads((run_dir / f"eval_test_k{args.k}_best.json").read_text())
    accelerated = any("accelerator=gpu" in o or "accelerator=cuda" in o for o in args.overrides)
    row = (
        f"| {' '.join(args.overrides) or '(protocol as configured)'} | {e['nll_iw']:.2f} ± {e['nll_iw_se']:.2f} "
        f"| {e['elbo']:.2f} | {e['active_units']}/{e['latent_dim']} | {m['epochs']} | {t['train_seconds'] / 60:.1f} "
        f"| {eval_seconds / 60:.1f} | {machine(accelerated)} |"
    )
    print(
        f"\n| overrides | test nll_iw (k={args.k}) | test ELBO | active units | epochs | train min | eval min "
        "| machine |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(row)
    if args.append:
        with open(args.append, "a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
