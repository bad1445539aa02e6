"""A run's files as they reach the disk: atomic writes (files.py), figures (figures.py), image grids (images.py)
and TensorBoard's embedding projector (projector.py). Shared by training, the commands and the search; imports the
core (a grid draws from a VAE), never Lightning or Hydra."""
