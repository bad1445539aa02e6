"""The fixed cost of the commands: whole processes timed from the shell's side, medians of interleaved repeats,
beside the floor every command pays, `python -c "import torch"`.

    python benchmarks/startup.py --repeats 5 [--fashion-mnist] [--bin .venv/bin]
    python benchmarks/startup.py --refusals --repeats 9 [--bin .venv/bin]

A digits checkpoint is trained first (one epoch, in a temporary folder); then each round runs, in turn:
  floor        python -c "import torch"
  vae-sample   vae-sample ckpt_path=<digits run> n=16
  vae-eval     vae-eval ckpt_path=<digits run> iw_samples=5
  train-1      vae-train, digits, one training step (trainer.max_epochs=1 ++trainer.limit_train_batches=1)
  fm-train-1   (--fashion-mnist) the same on Fashion-MNIST with the 784-400-20 model
so machine noise hits all of them alike. Prints one JSON object: the median seconds of each, and each one's
ratio to the floor.

--without-matplotlib: each command also as it runs where matplotlib is not installed (hidden from the import
system by a sitecustomize on PYTHONPATH), named <command>-no-mpl: what the figures' dependency costs a command that
draws none (a training process imports it through torchmetrics when it is installed).

--refusals: how fast a mistyped setting is refused, against the floor of a command that only composes its config:
  floor        python -c "import hydra"
  cfg-job      vae-train --cfg job (Hydra composes the config once, prints it, and exits)
  train-K0     vae-train model.latent_dim=0 (refused, exit status 2)
  eval-k0      vae-eval ckpt_path=none iw_samples=0 (refused, exit status 2)
  train-pair   vae-train model.likelihood=gaussian model.gaussian_std=-1 (refused once composed: a pair of settings)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
ONE_STEP = ["trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1", *QUIET]


# Imported by Python at start-up from PYTHONPATH: matplotlib then reads as not installed, to the import system and
# to the package metadata that libraries consult (torchmetrics imports it only when it is installed).
NO_MATPLOTLIB = """import importlib.metadata
import sys

_version = importlib.metadata.version


def version(name):
    if name.lower() == "matplotlib":
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)


importlib.metadata.version = version


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoMatplotlib())
"""


def _seconds(cmd: list[str], cwd: Path, exit_status: int = 0, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if done.returncode != exit_status:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}, not {exit_status}")
    return time.perf_counter() - start


def _report(times: dict[str, list[float]], repeats: int) -> None:
    medians = {name: statistics.median(t) for name, t in times.items()}
    floor = medians["floor"]
    print(
        json.dumps(
            {
                "repeats": repeats,
                "median_s": {k: round(v, 2) for k, v in medians.items()},
                "x_floor": {k: round(v / floor, 2) for k, v in medians.items()},
            },
            indent=2,
        )
    )


def refusals(tool, repeats: int) -> None:
    commands = {
        "floor": ([sys.executable, "-c", "import hydra"], 0),
        "cfg-job": ([tool("vae-train"), "--cfg", "job"], 0),
        "train-K0": ([tool("vae-train"), "model.latent_dim=0"], 2),
        "eval-k0": ([tool("vae-eval"), "ckpt_path=none", "iw_samples=0"], 2),
        "train-pair": ([tool("vae-train"), "model.likelihood=gaussian", "model.gaussian_std=-1"], 2),
    }
    times = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for name, (cmd, status) in commands.items():
                times[name].append(_seconds(cmd, Path(tmp), status))
    _report(times, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fashion-mnist", action="store_true", help="also time a one-step Fashion-MNIST run")
    parser.add_argument("--bin", default=str(Path(sys.executable).parent), help="where vae-train and the rest live")
    parser.add_argument("--refusals", action="store_true", help="time refused commands instead (see above)")
    parser.add_argument(
        "--without-matplotlib",
        action="store_true",
        help="also time each command where matplotlib is not installed (see above)",
    )
    args = parser.parse_args()
    tool = lambda name: str(Path(args.bin) / name)  # noqa: E731
    if args.refusals:
        return refusals(tool, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "digits"
        subprocess.run(
            [tool("vae-train"), "trainer.max_epochs=1", f"hydra.run.dir={run}", *QUIET],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        commands = {
            "floor": [sys.executable, "-c", "import torch"],
            "vae-sample": [tool("vae-sample"), f"ckpt_path={run}", f"out={tmp / 'png'}", "n=16"],
            "vae-eval": [
                tool("vae-eval"),
                f"ckpt_path={run}",
                "iw_samples=5",
                f"out={tmp / 'eval.json'}",
                "figures=false",
            ],
            "train-1": [tool("vae-train"), *ONE_STEP, f"hydra.run.dir={tmp / 'one'}"],
        }
        if args.fashion_mnist:
            commands["fm-train-1"] = [
                tool("vae-train"),
                "data=fashion_mnist",
                "model.hidden_dims=[400]",
                "model.latent_dim=20",
                *ONE_STEP,
                f"hydra.run.dir={tmp / 'fm'}",
            ]
        envs = {name: None for name in commands}
        if args.without_matplotlib:
            (tmp / "no-mpl").mkdir()
            (tmp / "no-mpl" / "sitecustomize.py").write_text(NO_MATPLOTLIB)
            hidden = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp / "no-mpl"), os.environ.get("PYTHONPATH")])),
            }
            for name in [n for n in commands if n != "floor"]:
                commands[f"{name}-no-mpl"], envs[f"{name}-no-mpl"] = commands[name], hidden
        times = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                times[name].append(_seconds(cmd, tmp, env=envs[name]))
    _report(times, args.repeats)


if __name__ == "__main__":
    main()
