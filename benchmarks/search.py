"""The same Optuna search run three ways, side by side: without pruning, with the default median pruner, and with
the pruner by two workers sharing the study's database. Each worker is one `vae-train --multirun
hparams_search=optuna` process on one thread (OMP_NUM_THREADS=1); the figures are the wall time until the last
worker ends, how many trials were pruned, and the best validation ELBO found.

    python benchmarks/search.py [--trials 20] [--epochs 4] [--data fashion_mnist] [--out outputs/bench/search]

Extra arguments after -- go to every vae-train command (e.g. -- data.data_dir=/path/to/fashion-mnist).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna


def run(name: str, workers: int, pruner: str, args, extra: list[str]) -> dict:
    sweep = Path(args.out) / name
    command = [
        str(Path(sys.executable).parent / "vae-train"),
        "--multirun",
        "hparams_search=optuna",
        f"data={args.data}",
        f"trainer.max_epochs={args.epochs}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.pruner={pruner}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={sweep}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        sys.exit(f"{name}: a worker failed:\n" + "\n".join(e[-2000:] for e in errors))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep.resolve() / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    return {
        "search": name,
        "workers": workers,
        "pruner": pruner,
        "wall_s": round(wall, 1),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "epochs_trained": epochs,
        "best_val_elbo": round(study.best_value, 3),
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--out", default="outputs/bench/search")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(
        f"{'search':<18} {'workers':>7} {'wall s':>8} {'complete':>8} {'pruned':>6} {'epochs':>6} {'best val ELBO':>13}"
    )
    rows = []
    for name, workers, pruner in (
        ("no_pruning", 1, "none"),
        ("median", 1, "median"),
        ("median_2_workers", 2, "median"),
    ):
        r = run(name, workers, pruner, args, extra)
        rows.append(r)
        print(
            f"{r['search']:<18} {r['workers']:>7} {r['wall_s']:>8} {r['complete']:>8} {r['pruned']:>6} "
            f"{r['epochs_trained']:>6} {r['best_val_elbo']:>13}",
            flush=True,
        )
        (Path(args.out) / "search.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
