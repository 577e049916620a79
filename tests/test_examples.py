"""The examples run at a small size and learn something."""

from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import knn_digits  # noqa: E402


def test_knn_on_pixels_is_a_strong_baseline():
    assert knn_digits.pixel_knn(0) > 0.95


def test_soft_knn_embedding_learns_in_torch():
    pytest.importorskip("torch")
    assert knn_digits.train_torch(0, steps=60) > 0.85


def test_soft_knn_embedding_learns_in_jax():
    pytest.importorskip("jax")
    assert knn_digits.train_jax(0, steps=60) > 0.85


def test_untrained_embedding_is_worse_than_trained():
    pytest.importorskip("torch")
    assert knn_digits.train_torch(0, steps=0) < knn_digits.train_torch(0, steps=150)
