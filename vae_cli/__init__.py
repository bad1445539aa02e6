"""vae-cli: a command-line experiment runner for variational autoencoders."""

__version__ = "0.1.0"
