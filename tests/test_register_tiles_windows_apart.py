"""register_tiles' cost on several workers for layers whose windows do not overlap (the
input gradient of a 2×2 stride-2 up-sampling): flat_rows runs those instead."""

from __future__ import annotations

import numpy as np

from convarith.engine.dispatch import ConvProblem


def test_windows_apart_leave_register_tiles_on_several_workers(monkeypatch):
    """A batch of 2×2 stride-2 windows (an up-sampling's input gradient) on two workers
    costs register_tiles more than flat_rows (on every vector width); one worker, one
    image and overlapping windows keep their usual cost."""
    from convarith.engine.algorithms import _threads, register_tiles

    f32 = np.dtype(np.float32)
    apart = ConvProblem((16, 112, 112, 64), (2, 2, 64, 128), (2, 2), (1, 1), 1, (56, 56), f32)
    overlapping = ConvProblem((16, 113, 113, 64), (3, 3, 64, 128), (2, 2), (1, 1), 1,
                              (56, 56), f32)
    one_image = ConvProblem((1, 112, 112, 64), (2, 2, 64, 128), (2, 2), (1, 1), 1, (56, 56),
                            f32)
    assert register_tiles.windows_apart(apart) and not register_tiles.windows_apart(overlapping)

    def costs(workers, apart_per_flop):
        monkeypatch.setattr(_threads, "worker_count", lambda: workers)
        monkeypatch.setattr(register_tiles, "worker_count", lambda: workers)
        monkeypatch.setattr(register_tiles, "APART_PER_FLOP", apart_per_flop)
        return [register_tiles.cost(p) / p.flops for p in (apart, overlapping, one_image)]

    assert costs(2, 0.75)[0] >= 0.75 > 0.7  # flat_rows' cost: 0.7 a FLOP
    assert costs(2, 5.0)[0] >= 5.0
    # the rule leaves the others alone: their costs do not follow APART_PER_FLOP
    assert costs(1, 0.75) == costs(1, 5.0)
    assert costs(2, 0.75)[1:] == costs(2, 5.0)[1:]
