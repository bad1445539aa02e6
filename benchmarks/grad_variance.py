"""Does the analytic KL lower the variance of the encoder's gradient? (The reason the ELBO is written with its KL in closed form.)

At one model state (a checkpoint) and one fixed minibatch, draws the single-sample gradient of the
loss w.r.t. the encoder's parameters `--draws` times under each KL estimator (only the noise eps
differs between draws) and reports the total variance, trace Cov[g], of each, and their ratio.

    python benchmarks/grad_variance.py ckpt_path=outputs/DATE/TIME [draws=200] [batch=128] [seed=0]
"""
import json
import sys

import torch

from vae_cli.cli.loading import load_vae, make_datamodule, resolve_checkpoint
from vae_cli.training.objective import Objective


def encoder_grad_variance(vae, x: torch.Tensor, estimator: str, draws: int) -> float:
    """trace Cov[d loss / d phi] over the reparameterisation noise, phi = the encoder's parameters, for the
    negative ELBO (beta 1, no warm-up or free bits) with the KL estimated by `estimator`."""
    objective = Objective(kl_estimator=estimator)
    params = list(vae.encoder.parameters())
    grads = []
    for _ in range(draws):
        vae.zero_grad(set_to_none=True)
        objective.loss(vae.terms(x), step=0, steps_per_epoch=0).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    g = torch.stack(grads).double()
    return g.var(0).sum().item()


def main(argv: list[str]) -> None:
    args = {"draws": "200", "batch": "128", "seed": "0", **dict(a.split("=", 1) for a in argv)}
    vae, data_config = load_vae(resolve_checkpoint(args["ckpt_path"], "best.ckpt"))
    x = make_datamodule(data_config).head("val", int(args["batch"]))[0]
    torch.manual_seed(int(args["seed"]))
    var = {e: encoder_grad_variance(vae, x, e, int(args["draws"])) for e in ("analytic", "mc")}
    print(json.dumps({"checkpoint": args["ckpt_path"], "draws": int(args["draws"]), "batch": len(x),
                      "trace_cov_encoder_grad": var, "mc/analytic": var["mc"] / var["analytic"]}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
