"""What is logged about the ELBO, by name: adding a metric is adding it here.

Only `math` is imported at the top (the functions take tensors or floats alike), so vae-report reads
the names without loading torch.
"""

import math


def bits_per_dim(nll_nats, n_dims: int):
    """A negative log-likelihood in nats per example as bits per data dimension: nll / (D ln 2)."""
    return nll_nats / (n_dims * math.log(2))


def batch_metrics(terms, loss, n_dims: int, iwae=None) -> dict:
    """A batch's means in nats per example (terms: core.vae.Terms, the one-sample ELBO's terms with the
    analytic KL, or its Monte Carlo estimate where the posterior and prior families have no closed form), logged
    as <split>/<name>; `loss` is what the objective optimises; `iwae`, when training
    on k > 1 samples, the k-sample bound L_k per example. recon_loss and kl come first: the non-finite
    guard names the first non-finite metric in this order."""
    from .elbo import elbo  # here, not at the top: see above

    recon, kl = terms.recon.mean(), terms.kl.mean()
    mean_elbo = elbo(recon, kl)
    metrics = {"recon_loss": recon, "kl": kl, "elbo": mean_elbo, "bpd": bits_per_dim(-mean_elbo, n_dims), "loss": loss}
    if iwae is not None:
        metrics["iwae"] = iwae.mean()
    return metrics


# The metric best.ckpt is chosen on unless callbacks.model_checkpoint.monitor names another (its config's default).
MONITOR = "val/elbo"

# What a finished run reports: the final log line, metrics.json's test/ values in TensorBoard's HPARAMS
# tab, and vae-report's default columns.
SUMMARY = ("elbo", "recon_loss", "kl", "bpd")


def best_val_key(monitor: str | None) -> str:
    """metrics.json's name for the best value of the metric best.ckpt is chosen on: best_val_elbo for val/elbo,
    best_val_iwae for a run checkpointed on its k-sample bound, so no key claims an ELBO it does not hold."""
    return "best_" + (monitor or MONITOR).replace("/", "_")


def run_summary(monitor: str | None = None) -> tuple[str, ...]:
    return (*(f"test/{m}" for m in SUMMARY), best_val_key(monitor))


RUN_SUMMARY = run_summary()
