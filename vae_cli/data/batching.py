"""Batches by index from tensors held in memory (on the training device when it is a GPU), and
binarisation.

Binarisation (for a binary likelihood): training batches are re-sampled every step (dynamic
binarisation, on the device the batch lands on); validation and test sets are binarised once with
fixed seeds, so every run and every checkpoint is scored on the same bits.
"""

import numpy as np
import torch

# Fixed seeds of the val/test binarisation: independent of the run's `seed`, so runs with different
# seeds are compared on the same bits.
VAL_BINARIZE_SEED = 1
TEST_BINARIZE_SEED = 2


class TensorBatches:
    """Batches of rows of aligned in-memory tensors, by index: one permutation per epoch (when
    shuffling), then slices of it. No DataLoader, sampler or collate step, so a batch costs one
    gather per tensor; with the tensors on the training device no copy is made at all.

    The permutation of epoch e depends only on (seed, e), so a resumed run sees the same order
    as an uninterrupted one; `epoch` is read from the trainer when one is attached.
    """

    def __init__(
        self,
        tensors: list[torch.Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch=lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        progress=None,
    ):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        # progress(): how many of this epoch's batches training has taken (the trainer's count, which excludes a
        # batch fetched ahead); with it, a checkpoint saved mid-epoch resumes at the next batch of the same order.
        self.progress = progress
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def state_dict(self) -> dict:
        return {} if self.progress is None else {"epoch": self.epoch(), "batches": self.progress()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_at = (state["epoch"], state["batches"])

    def _indices(self) -> torch.Tensor:
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        # Each process of a multi-process run takes every world_size-th example.
        return idx[self.rank :: self.world_size].to(self.tensors[0].device)

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.tensors[0]), self.world_size))
        return -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        done = self._resume_at[1] if self._resume_at and self._resume_at[0] == self.epoch() else 0
        self._resume_at = None
        for start in range(done * self.batch_size, len(idx), self.batch_size):
            rows = idx[start : start + self.batch_size]
            yield [t[rows] for t in self.tensors]


def binarize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """x_bin ~ Bernoulli(x), with a private generator when a seed is given.

    Written as (u < x), u ~ U(0, 1): the same distribution as torch.bernoulli and cheaper on the
    CPU, which matters when every training batch is binarised afresh."""
    g = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return (u < x).to(x.dtype)


def binarize_numpy(xs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Each x_bin ~ Bernoulli(x) drawn with numpy's legacy generator seeded once, one tensor after the
    other: how the reference code of the published Fashion-MNIST results binarises its validation and
    test sets (seed 777). Values on the 8-bit grid are taken as k/255 in float64, as numpy reads them
    from the original bytes, so the bits are the reference's own."""
    rng = np.random.RandomState(seed)
    out = []
    for x in xs:
        p = x.double()
        k = (p * 255).round()
        if torch.allclose(k / 255, p, rtol=0, atol=1e-6):
            p = k / 255
        out.append(torch.from_numpy(rng.binomial(1, p.numpy())).to(x.dtype))
    return out
