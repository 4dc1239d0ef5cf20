"""Shared test setup: Keras runs on its JAX backend (no TensorFlow needed)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
