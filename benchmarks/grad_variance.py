"""How noisy is each gradient estimator? At one model state (a checkpoint) and one fixed minibatch, the
gradient of the loss is drawn `draws` times under each estimator, only the noise eps differing, and
summarised per network:

- trace Cov[g]: the total variance of the gradient over the draws;
- SNR: |E[g_j]| / std[g_j] for each parameter j, averaged over the network's parameters (Rainforth et al. 2018,
  "Tighter variational bounds are not necessarily better": the encoder's SNR of the IWAE gradient falls as
  k grows, which DReG (Tucker et al. 2019) is built to undo).

Estimators: at k = 1 the ELBO with its KL in closed form (analytic) or estimated from the sample (mc), and
sticking the landing (stl); at each k > 1 the IWAE bound's standard reparameterised gradient and DReG. All
at KL weight 1, without free bits.

    python benchmarks/grad_variance.py ckpt_path=outputs/DATE/TIME [draws=200] [batch=128] [seed=0] [ks=1,5,50]
"""

import json
import sys

import torch

from vae_cli.cli.loading import load_vae, make_datamodule, resolve_checkpoint
from vae_cli.training.objective import Objective


def estimators(ks: list[int]) -> dict[str, Objective]:
    out = {}
    for k in ks:
        if k == 1:
            out.update(
                {
                    "k1 analytic KL": Objective(),
                    "k1 mc KL": Objective(kl_estimator="mc"),
                    "k1 stl": Objective(gradient="stl"),
                }
            )
        else:
            out.update(
                {f"k{k} reparam": Objective(iw_samples=k), f"k{k} dreg": Objective(iw_samples=k, gradient="dreg")}
            )
    return out


def gradient_draws(vae, x: torch.Tensor, objective: Objective, draws: int) -> dict[str, torch.Tensor]:
    """(draws, n_params) gradients of the encoder's and of the decoder's parameters."""
    nets = {"encoder": list(vae.encoder.parameters()), "decoder": list(vae.decoder.parameters())}
    out = {name: [] for name in nets}
    for _ in range(draws):
        vae.zero_grad(set_to_none=True)
        objective(vae, x, step=0, steps_per_epoch=0).loss.backward()
        for name, params in nets.items():
            out[name].append(torch.cat([p.grad.flatten() for p in params]))
    return {name: torch.stack(g).double() for name, g in out.items()}


def summary(g: torch.Tensor) -> dict[str, float]:
    mean, std = g.mean(0), g.std(0)
    used = std > 0  # parameters the loss does not touch have no noise and no signal
    return {"trace_cov": g.var(0).sum().item(), "snr": (mean[used].abs() / std[used]).mean().item()}


def main(argv: list[str]) -> None:
    args = {"draws": "200", "batch": "128", "seed": "0", "ks": "1,5,50", **dict(a.split("=", 1) for a in argv)}
    vae, data_config = load_vae(resolve_checkpoint(args["ckpt_path"], "best.ckpt"))
    x = make_datamodule(data_config).head("val", int(args["batch"]))[0]
    results = {}
    for name, objective in estimators([int(k) for k in args["ks"].split(",")]).items():
        torch.manual_seed(int(args["seed"]))
        grads = gradient_draws(vae, x, objective, int(args["draws"]))
        results[name] = {net: summary(g) for net, g in grads.items()}
        print(
            f"{name:16} encoder trace Cov {results[name]['encoder']['trace_cov']:12.4g}  SNR "
            f"{results[name]['encoder']['snr']:.4f}   decoder SNR {results[name]['decoder']['snr']:.4f}",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {"checkpoint": args["ckpt_path"], "draws": int(args["draws"]), "batch": len(x), "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
