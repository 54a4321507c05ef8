"""Seeds and directions (zo.seeds): z is a pure function of (seed, parameter index), so it is never stored."""

import torch

from privtune.zo.seeds import Direction, derive_seed, direction_seed


def test_same_seed_same_direction_different_seed_different():
    p = torch.zeros(5, 7)
    a, b, c = Direction(42, 1.0).z(3, p), Direction(42, 1.0).z(3, p), Direction(43, 1.0).z(3, p)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(Direction(42, 1.0).z(4, p), a)  # each parameter has its own stream
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)


def test_direction_seed_is_a_tagged_63_bit_derived_seed():
    s = direction_seed(7, 3, 1)
    assert s == derive_seed(7, 1, 3, 1) and 0 <= s < 2 ** 63
    assert len({direction_seed(7, t, k) for t in range(20) for k in range(3)}) == 60


def test_z_is_drawn_in_the_parameters_dtype_and_shape():
    p = torch.zeros(3, 4, dtype=torch.float64)
    z = Direction.draw(5, 0, p)
    assert z.dtype == torch.float64 and z.shape == (3, 4)
    assert torch.equal(Direction(5, 0.1).z(0, p), z)  # the scale is not part of z
