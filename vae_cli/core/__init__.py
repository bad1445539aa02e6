"""The math of the VAE, once, in torch alone: likelihood families, networks, the VAE module with its
terms and importance-weighted estimate, scoring, and the metrics' names. Nothing here imports
Lightning or Hydra, and nothing is imported here, so `vae_cli.core.metrics` stays light."""
