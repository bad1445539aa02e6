"""Copy a finished run into the repository, so that anyone with a clone can score its best checkpoint again.

    python benchmarks/publish_run.py outputs/bench/fm_WE benchmarks/runs/fm_WE

The copy holds the run's record (Hydra's configs and provenance of every invocation, train.log, metrics.json,
timing.json, vae-eval's results) and checkpoints/best.ckpt reduced to what vae-eval and vae-sample read: the
weights they score (a weight average's, when the run kept one), the model's settings and the data config. The
optimiser's state, the raw weights beside an average, last.ckpt and the TensorBoard event files stay behind.
Then `vae-eval ckpt_path=benchmarks/runs/fm_WE iw_samples=5000 out=/tmp/fm_WE.json` scores it again elsewhere (the
committed results stay as they are), and comparing the two JSON files shows whether anything changed.
"""

import argparse
import shutil
from pathlib import Path

import torch

KEEP = ("state_dict", "hyper_parameters", "data_config")  # what vae_cli.cli.loading.load_vae reads
RECORD = ("*.json", "*.pt", "train.log", ".hydra/**/*.yaml", ".hydra/**/*.log")


def publish(run: Path, dest: Path) -> None:
    best = run / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    slim = {key: ckpt[key] for key in KEEP if key in ckpt}
    slim["state_dict"] = {k: v for k, v in slim["state_dict"].items() if k.startswith("vae.")}
    slim["data_config"] = {k: v for k, v in slim.get("data_config", {}).items() if k not in ("data_dir", "path")}
    for pattern in RECORD:
        for f in run.glob(pattern):
            target = dest / f.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(slim, dest / "checkpoints" / "best.ckpt")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {size / 2**20:.1f} MiB ({best} was {best.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run directory (holding checkpoints/best.ckpt)")
    p.add_argument("dest", type=Path, help="where the copy goes, e.g. benchmarks/runs/<name>")
    args = p.parse_args()
    publish(args.run, args.dest)
