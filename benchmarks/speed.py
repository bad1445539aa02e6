"""Training throughput of vae-train against two hand-written PyTorch loops, in one run.

Same model (784-400-20 MLP VAE, Bernoulli likelihood on dynamically binarised pixels, analytic KL),
batch 128, Adam 1e-3, Fashion-MNIST's training images, the same number of optimiser steps:
  (a) vae-train, as a user runs it (a subprocess; its own timer around trainer.fit, validation off);
  (b) a loop fed by DataLoader(FashionMNIST, transform=ToTensor()), as in pytorch/examples' vae;
  (c) a loop over the training set preloaded as one tensor.
(a) is also run with trainer.precision=bf16-mixed (networks in bf16, objective in float32).
Each is run --repeats times, interleaved, and the median is reported, so machine noise hits all
three alike. Also times the start-up of `vae-train --help` and of a one-step run, and with --epochs
one epoch of the Fashion-MNIST protocol (experiment=fashion_mnist_vae).

    python benchmarks/speed.py --steps 2000 --repeats 3 [--device cuda] [--batch 128] [--epochs 4] [--data-dir data]
    python benchmarks/speed.py --whole-process 5 --repeats 2    # whole processes, A B B A
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

import torch
from torch import nn
from torch.nn import functional as F

BATCH, LR, HIDDEN, K = 128, 1e-3, 400, 20


class ReferenceVAE(nn.Module):
    """The classic 784-400-20 VAE of pytorch/examples, written out by hand."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, HIDDEN), nn.Linear(HIDDEN, 2 * K)
        self.fc3, self.fc4 = nn.Linear(K, HIDDEN), nn.Linear(HIDDEN, 784)

    def loss(self, x):
        mu, logvar = self.fc2(F.relu(self.fc1(x))).chunk(2, -1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.fc4(F.relu(self.fc3(z)))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
        return (recon + kl).mean()


def _train_steps(batches, steps: int, device: str) -> float:
    """Seconds for `steps` optimiser steps over an iterator factory of grey-value batches."""
    torch.manual_seed(0)
    model = ReferenceVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    done = 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    while done < steps:
        for x in batches():
            x = torch.bernoulli(x.to(device, non_blocking=True).view(-1, 784))
            opt.zero_grad(set_to_none=True)
            model.loss(x).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def loop_dataloader(data_dir: str, steps: int, device: str) -> float:
    from torchvision import datasets, transforms

    ds = datasets.FashionMNIST(data_dir, train=True, download=False, transform=transforms.ToTensor())
    kwargs = {"num_workers": 1, "pin_memory": True} if device.startswith("cuda") else {}
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, **kwargs)
    return _train_steps(lambda: (x for x, _ in loader), steps, device)


def loop_tensor(data_dir: str, steps: int, device: str) -> float:
    from torchvision import datasets

    x_all = (datasets.FashionMNIST(data_dir, train=True, download=False).data.float() / 255).to(device)

    def batches():
        perm = torch.randperm(len(x_all), device=device)
        return (x_all[perm[i : i + BATCH]] for i in range(0, len(x_all), BATCH))

    return _train_steps(batches, steps, device)


def vae_train_cmd(data_dir: str, run_dir: Path, steps: int, device: str, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).parent / "vae-train"
    return [
        str(exe),
        "data=fashion_mnist",
        f"data.data_dir={data_dir}",
        "model.hidden_dims=[400]",
        f"model.latent_dim={K}",
        f"data.batch_size={BATCH}",
        f"optim.lr={LR}",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "callbacks.latent_projector.max_points=0",
        f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def fit_seconds(cmd_for) -> float:
    """vae-train's own timer around trainer.fit, for the command cmd_for(run_dir) in a scratch run directory."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(cmd_for(Path(tmp) / "run"), check=True, capture_output=True, text=True)
        return json.loads((Path(tmp) / "run" / "timing.json").read_text())["train_seconds"]


def vae_train(data_dir: str, steps: int, device: str, extra: list[str]) -> float:
    return fit_seconds(lambda run_dir: vae_train_cmd(data_dir, run_dir, steps, device, extra))


def startup(data_dir: str, device: str) -> dict[str, float]:
    exe = str(Path(sys.executable).parent / "vae-train")
    t = time.perf_counter()
    subprocess.run([exe, "--help"], check=True, capture_output=True)
    help_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(vae_train_cmd(data_dir, Path(tmp) / "run", 1, device, []), check=True, capture_output=True)
        one_step_s = time.perf_counter() - t
    return {"help_s": help_s, "one_step_run_s": one_step_s}


def protocol_epoch(data_dir: str, device: str, epochs: int) -> dict[str, float]:
    """Seconds per epoch of `experiment=fashion_mnist_vae` (batch 100, 50,000 training images, validation on),
    from two runs of 1 and `epochs` epochs, so start-up and the first epoch's warm-up cancel."""

    def cmd(n: int):
        return lambda run_dir: [
            str(Path(sys.executable).parent / "vae-train"),
            "experiment=fashion_mnist_vae",
            f"data.data_dir={data_dir}",
            f"trainer.max_epochs={n}",
            "trainer.enable_progress_bar=false",
            "callbacks.latent_projector.max_points=0",
            f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
            f"hydra.run.dir={run_dir}",
        ]

    first, total = fit_seconds(cmd(1)), fit_seconds(cmd(epochs))
    return {"protocol_first_epoch_s": round(first, 2), "protocol_epoch_s": round((total - first) / (epochs - 1), 2)}


def hand_loop_process(data_dir: str, epochs: int, device: str) -> None:
    """The hand-written tensor-resident loop as a whole program: read the training images, train `epochs` epochs
    over the 50,000 that vae-train trains on (it holds the last 10,000 out for validation), and exit."""
    from torchvision import datasets

    x_all = (datasets.FashionMNIST(data_dir, train=True, download=False).data[:50_000].float() / 255).to(device)

    def batches():
        perm = torch.randperm(len(x_all), device=device)
        return (x_all[perm[i : i + BATCH]] for i in range(0, len(x_all), BATCH))

    print(json.dumps({"train_seconds": _train_steps(batches, epochs * -(-len(x_all) // BATCH), device)}))


def whole_processes(data_dir: str, epochs: int, device: str, repeats: int) -> dict:
    """Wall time of whole processes, as a user waits for them, A B B A ...: (A) vae-train for `epochs` epochs
    without validation, test and all; (B) the hand-written loop's program for the same epochs."""

    def vae(run_dir):
        return [
            str(Path(sys.executable).parent / "vae-train"),
            "data=fashion_mnist",
            f"data.data_dir={data_dir}",
            "model.hidden_dims=[400]",
            f"model.latent_dim={K}",
            f"data.batch_size={BATCH}",
            f"optim.lr={LR}",
            f"trainer.max_epochs={epochs}",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
            f"hydra.run.dir={run_dir}",
        ]

    hand = [
        sys.executable,
        __file__,
        "--hand-loop",
        str(epochs),
        "--data-dir",
        data_dir,
        "--device",
        device,
        "--batch",
        str(BATCH),
    ]
    seconds = {"a_vae_train": [], "b_hand_loop": []}
    training = {"a_vae_train": [], "b_hand_loop": []}  # of which the optimiser steps (each program's own timer)
    order = ["a_vae_train", "b_hand_loop", "b_hand_loop", "a_vae_train"] * ((repeats + 1) // 2)
    for name in order:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            done = subprocess.run(
                vae(Path(tmp) / "run") if name == "a_vae_train" else hand, check=True, capture_output=True, text=True
            )
            seconds[name].append(round(time.perf_counter() - t, 2))
            timing = (Path(tmp) / "run" / "timing.json").read_text() if name == "a_vae_train" else done.stdout
            training[name].append(round(json.loads(timing)["train_seconds"], 2))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "whole_process_epochs": epochs,
        "whole_process_s": seconds,
        "training_s": training,
        "whole_process_median_s": med,
        "whole_process_a/b": round(med["a_vae_train"] / med["b_hand_loop"], 3),
        "training_median_s": {k: statistics.median(v) for k, v in training.items()},
    }


def main() -> None:
    global BATCH  # --batch sets it for all three loops
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=os.environ.get("VAE_CLI_DATA", "data"))
    p.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="also time one epoch of experiment=fashion_mnist_vae, from runs of 1 and this many epochs",
    )
    p.add_argument("--batch", type=int, default=BATCH, help="batch size of all three (128: the classic example)")
    p.add_argument("--extra", nargs="*", default=[], help="extra vae-train overrides for (a)")
    p.add_argument(
        "--whole-process",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="only time whole processes A B B A: vae-train for EPOCHS epochs (no validation) against the "
        "hand-written tensor loop's program for the same epochs",
    )
    p.add_argument("--hand-loop", type=int, default=0, help=argparse.SUPPRESS)  # the program (B) above
    args = p.parse_args()
    BATCH = args.batch
    if args.hand_loop:
        return hand_loop_process(args.data_dir, args.hand_loop, args.device)
    if args.whole_process:
        result = {
            "device": f"cpu ({os.cpu_count()} cores)" if args.device == "cpu" else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(),
            "batch": BATCH,
            "torch": torch.__version__,
            **whole_processes(args.data_dir, args.whole_process, args.device, args.repeats),
        }
        return print(json.dumps(result, indent=2))

    # Unpack the data once (vae-train finds it in data_dir, from the Debian package or a download).
    subprocess.run(
        vae_train_cmd(args.data_dir, Path(tempfile.mkdtemp()) / "warm", 1, args.device, []),
        check=True,
        capture_output=True,
    )
    runs = {"a_vae_train": [], "a_vae_train_bf16": [], "b_dataloader_loop": [], "c_tensor_loop": []}
    for _ in range(args.repeats):
        runs["a_vae_train"].append(vae_train(args.data_dir, args.steps, args.device, args.extra))
        runs["a_vae_train_bf16"].append(
            vae_train(args.data_dir, args.steps, args.device, ["trainer.precision=bf16-mixed", *args.extra])
        )
        runs["b_dataloader_loop"].append(loop_dataloader(args.data_dir, args.steps, args.device))
        runs["c_tensor_loop"].append(loop_tensor(args.data_dir, args.steps, args.device))
    rate = {k: args.steps * BATCH / statistics.median(v) for k, v in runs.items()}
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
        "steps": args.steps,
        "batch": BATCH,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "samples_per_s": {k: round(v) for k, v in rate.items()},
        "a/b": round(rate["a_vae_train"] / rate["b_dataloader_loop"], 3),
        "a/c": round(rate["a_vae_train"] / rate["c_tensor_loop"], 3),
        "a_bf16/b": round(rate["a_vae_train_bf16"] / rate["b_dataloader_loop"], 3),
        "a_bf16/c": round(rate["a_vae_train_bf16"] / rate["c_tensor_loop"], 3),
        "seconds": {k: [round(s, 3) for s in v] for k, v in runs.items()},
        **{k: round(v, 2) for k, v in startup(args.data_dir, args.device).items()},
    }
    if args.epochs > 1:
        result.update(protocol_epoch(args.data_dir, args.device, args.epochs))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
