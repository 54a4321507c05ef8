"""Seeds and directions: every random z the ZO engine uses is a pure function of integers, so it is never stored.

A direction's seed is public (it goes into the transcript); z for parameter i is drawn from its own generator, seeded
derive_seed(seed, i), so any one parameter's z can be regenerated alone, in any order, by any process.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of integer parts (numpy SeedSequence hashing)."""
    a, b = np.random.SeedSequence([int(x) & 0xFFFFFFFFFFFFFFFF for x in parts]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b)) & 0x7FFFFFFFFFFFFFFF


def direction_seed(run_seed: int, step: int, k: int = 0) -> int:
    """Public seed of direction k at `step` (tag 1 keeps it apart from other derived seeds)."""
    return derive_seed(run_seed, 1, step, k)


class Direction:
    """A perturbation θ + scale·z(seed); z for parameter i is drawn from its own generator, seeded (seed, i)."""

    def __init__(self, seed: int, scale: float):
        self.seed = int(seed)
        self.scale = float(scale)
        self.values: dict[int, torch.Tensor] = {}  # perturbed tensors of the layer being run

    @staticmethod
    def draw(seed: int, i: int, p: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=p.device)
        g.manual_seed(derive_seed(seed, i))
        return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)

    def z(self, i: int, p: torch.Tensor) -> torch.Tensor:
        return self.draw(self.seed, i, p)
