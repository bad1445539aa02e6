"""The training step's time with each prior (and posterior) family, side by side on the CPU.

The Fashion-MNIST protocol's model (experiment=fashion_mnist_vae: the 2x300 gated MLP, K = 40, Bernoulli decoder,
log-variance clipped to [-6, 2], 784 inputs, batch 100) and one training step as vae-train takes it: the objective
(training/objective.py, the ELBO), backward, and an Adam step. The families' VAEs are timed interleaved, one step of
each in turn, on random binary batches (the time does not depend on the pixels), and the medians are compared with
the first (prior=standard, posterior=diagonal).

    python benchmarks/families_speed.py --threads 2 --steps 200
    python benchmarks/families_speed.py --threads 2 --steps 200 --profile vamp   # where the VampPrior's step goes
"""

import argparse
import statistics
import time

import torch

from vae_cli.core.vae import VAE
from vae_cli.training.objective import Objective

FAMILIES = {
    "standard": dict(),
    "vamp": dict(prior={"family": "vamp", "n_components": 500}),
    "mog": dict(prior={"family": "mog", "n_components": 500}),
    "full": dict(posterior="full"),
    "iaf": dict(posterior={"family": "iaf", "n_steps": 2, "hidden_dims": [128]}),
}


def build(name: str) -> tuple[VAE, torch.optim.Optimizer]:
    torch.manual_seed(0)
    vae = VAE(
        (1, 28, 28),
        latent_dim=40,
        hidden_dims=[300, 300],
        activation="gated",
        likelihood="bernoulli",
        logvar_range=[-6, 2],
        **FAMILIES[name],
    )
    return vae, torch.optim.Adam(vae.parameters(), lr=5e-4)


def step(vae, opt, objective, x) -> float:
    start = time.perf_counter()
    loss = objective(vae, x, 1000, 500).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--families", default="standard,vamp")
    ap.add_argument("--profile", default=None, help="a family whose steps torch.profiler breaks down")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.families.split(",")
    models = {n: build(n) for n in names}
    objective = Objective()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch, 1, 28, 28, generator=g) > 0.5).float() for _ in range(8)]
    times = {n: [] for n in names}
    for i in range(args.warmup + args.steps):
        for n in names:
            t = step(*models[n], objective, batches[i % len(batches)])
            if i >= args.warmup:
                times[n].append(t)
    base = statistics.median(times[names[0]])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps each, "
        "interleaved; median ms per step (forward, backward, Adam):"
    )
    for n in names:
        med = statistics.median(times[n])
        q1, _, q3 = statistics.quantiles(times[n], n=4)
        print(
            f"  {n:<9} {1000 * med:8.2f} ms  (quartiles {1000 * q1:.2f} to {1000 * q3:.2f})  "
            f"{med / base:.2f}x {names[0]}"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        vae, opt = models[args.profile]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(20):
                step(vae, opt, objective, batches[i % len(batches)])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
