"""The training order: a seeded permutation per epoch, sharded across ranks like
``DistributedSampler``, and a seed per sample that depends only on (seed, epoch, position), so
a sample looks the same whatever the worker count, and after a resume mid-epoch.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

UINT64_MASK = (1 << 64) - 1


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array: a bijective, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> np.uint64:
    mixed = splitmix64(np.array([seed & UINT64_MASK], dtype=np.uint64))
    return splitmix64(mixed ^ np.uint64(epoch & UINT64_MASK))[0]


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """63-bit seeds (int64 >= 0) for ``positions`` of the global order of ``epoch``; a pure
    function of (seed, epoch, position)."""
    key = _epoch_key(seed, epoch)
    return (splitmix64(np.asarray(positions, dtype=np.uint64) ^ key) >> np.uint64(1)).astype(np.int64)


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for one process.

    The global order of an epoch is a permutation of ``range(n)`` drawn from a
    ``torch.Generator`` seeded by (seed, epoch) (or ``range(n)`` without shuffling). With
    ``world_size > 1`` it is padded by repeating its start (or cut, with ``drop_last``) to a
    multiple of ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...``, as
    ``DistributedSampler`` does. ``set_start(k)`` skips the first ``k`` samples of this
    rank's order in the next pass only, to resume exactly mid-epoch.
    """

    def __init__(
        self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self._start = 0
        if self.drop_last:
            self.num_samples = self.n // self.world_size
        else:
            self.num_samples = math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass yields."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's order in the next pass only."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is not in [0, {self.num_samples}] (samples of this rank per epoch)")
        self._start = int(start)

    def global_order(self) -> torch.Tensor:
        """Dataset indices of this epoch's global order, padded/cut to the sharded length."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(int(_epoch_key(self.seed, self.epoch) >> np.uint64(1)))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n and self.n > 0:
            repeats = math.ceil(total / self.n)
            order = order.repeat(repeats)
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.num_samples * self.world_size
        positions = np.arange(self.rank, total, self.world_size, dtype=np.int64)
        indices = self.global_order()[torch.from_numpy(positions)].tolist()
        seeds = sample_seeds(self.seed, self.epoch, positions).tolist()
        start, self._start = self._start, 0
        # A plain iterator built now, not a generator: the start is consumed by this pass.
        return iter(list(zip(indices[start:], seeds[start:])))

    def __len__(self) -> int:
        return self.num_samples - self._start


# ---------------------------------------------------------------------------------------------
# Precomputed text features (text_encoder: precomputed)
