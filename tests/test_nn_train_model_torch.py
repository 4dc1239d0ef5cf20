"""The ``convarith train`` model trains step for step as PyTorch's: same initial weights,
same batches; with SGD the losses before each step and the weights after the last agree
to float32 tolerance. With Adam they agree more loosely: PyTorch adds epsilon to
``sqrt(v_hat)``, Keras (and convarith) to ``sqrt(v)``, and Adam's first steps divide
each gradient by its own size, so float32 noise in near-zero gradients shows
(Adam's own parity with Keras: ``test_nn_training_parity``). Covers the training step's fast paths (the weight gradient chosen by
cost, e.g. :mod:`convarith.engine.algorithms.batch_as_channels`; the optimizer's reused
flat buffers) against an outside oracle, not against our own earlier output."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import nn
from convarith.commands.train import build_model

torch = pytest.importorskip("torch")

SEED = 1207


def _torch_losses(initial: list[np.ndarray], batches: list[tuple[np.ndarray, np.ndarray]],
                  padding: str, strides: int, optimizer_name: str, learning_rate: float
                  ) -> tuple[list[float], list[np.ndarray]]:
    k1, b1, k2, b2, w, b = (torch.from_numpy(a.copy()) for a in initial)
    pad = padding if strides == 1 else 0  # "valid" only with strides (PyTorch's rule)
    conv1 = torch.nn.Conv2d(k1.shape[2], k1.shape[3], 3, stride=strides, padding=pad)
    conv2 = torch.nn.Conv2d(k2.shape[2], k2.shape[3], 3, stride=strides, padding=pad)
    dense = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        for layer, kernel, bias in ((conv1, k1, b1), (conv2, k2, b2)):
            layer.weight.copy_(kernel.permute(3, 2, 0, 1))
            layer.bias.copy_(bias)
        dense.weight.copy_(w.T)
        dense.bias.copy_(b)
    params = [*conv1.parameters(), *conv2.parameters(), *dense.parameters()]
    optimizer = (torch.optim.Adam(params, lr=learning_rate, eps=1e-7) if optimizer_name == "Adam"
                 else torch.optim.SGD(params, lr=learning_rate))
    losses = []
    for x, y in batches:
        h = torch.relu(conv2(torch.relu(conv1(torch.from_numpy(x).permute(0, 3, 1, 2)))))
        logits = dense(h.permute(0, 2, 3, 1).flatten(1))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y.astype(np.int64)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    weights = [conv1.weight.detach().permute(2, 3, 1, 0).numpy(), conv2.weight.detach()
               .permute(2, 3, 1, 0).numpy(), dense.weight.detach().T.numpy()]
    return losses, weights


@pytest.mark.parametrize(("padding", "strides", "batch", "optimizer", "learning_rate",
                          "loss_tolerance", "weight_tolerance"), [
    # the command's defaults: the layers the speed work targets
    ("same", 1, 32, "SGD", 0.05, 2e-6, 2e-5),
    ("same", 1, 32, "Adam", 2e-3, 1e-4, 2e-2),  # epsilon placed differently: see above
    ("valid", 1, 8, "SGD", 0.05, 2e-6, 2e-5),
    ("valid", 2, 5, "SGD", 0.05, 2e-6, 2e-5),
])
def test_train_model_steps_match_pytorch(padding: str, strides: int, batch: int,
                                         optimizer: str, learning_rate: float,
                                         loss_tolerance: float,
                                         weight_tolerance: float) -> None:
    rng = np.random.default_rng(SEED)
    size, steps = 16, 6
    model = build_model(size, padding, strides, 1, 16, SEED)
    initial = model.get_weights()
    model.compile(getattr(nn, optimizer)(learning_rate), "sparse_categorical_crossentropy")
    batches = [(rng.random((batch, size, size, 1), dtype=np.float32),
                rng.integers(0, 10, batch)) for _ in range(steps)]
    ours = [float(model.train_on_batch(x, y)) for x, y in batches]
    theirs, weights = _torch_losses(initial, batches, padding, strides, optimizer, learning_rate)
    np.testing.assert_allclose(ours, theirs, rtol=loss_tolerance, err_msg=f"seed {SEED}")
    assert len(set(ours)) == steps, f"seed {SEED}: the weights did not move"
    mine = model.get_weights()
    for got, expected in zip((mine[0], mine[2], mine[4]), weights):
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert error < weight_tolerance, (
            f"seed {SEED}: weights after {steps} steps differ by {error:.1e}")
