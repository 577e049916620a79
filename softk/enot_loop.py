"""ENOT's training loop: the learning-rate schedule, the step loop with its loss checks, and the progress bar."""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["scheduled_lr", "fit_loop"]


def scheduled_lr(lr: float, schedule: str, i: int, steps: int) -> float:
    """The learning rate at step ``i`` of ``steps``: ``lr``, or ``lr (1 + cos(pi i / steps)) / 2`` for ``"cosine"``."""
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * i / steps))
    return lr


def fit_loop(
    step: Callable[[int], Any], steps: int, *, progress: bool | None, check_every: int,
    loss_values: Callable[[Any], tuple],
) -> list[tuple[int, float, float]]:
    """Run ``step(i)`` for ``i < steps``; read the losses every ``check_every`` steps.

    ``step`` returns the framework's loss pair, which ``loss_values`` turns into
    Python floats (a host sync, hence only every ``check_every`` steps). A
    non-finite loss stops training with ``FloatingPointError``. Returns the
    history ``[(step, dual loss, map loss), ...]``. ``progress``: a tqdm bar
    (or a printed line every tenth of the run without tqdm); ``None`` shows it
    from 1,000 steps on.
    """
    show = steps >= 1000 if progress is None else bool(progress)
    bar = _progress_bar(steps) if show else None
    history, start = [], time.perf_counter()
    for i in range(steps):
        losses = step(i)
        if (i + 1) % check_every and i + 1 != steps:
            continue
        dual, mapl = loss_values(losses)
        history.append((i + 1, dual, mapl))
        if not (math.isfinite(dual) and math.isfinite(mapl)):
            if bar is not None and hasattr(bar, "close"):
                bar.close()
            raise FloatingPointError(
                f"ENOT training diverged at step {i + 1}: dual loss {dual}, map loss {mapl}; "
                f"lower lr, standardise the data, or check the samplers"
            )
        if bar is not None:
            bar.update(i + 1, dual, mapl, time.perf_counter() - start)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return history


class _PlainBar:
    """A printed line every tenth of the run, for machines without tqdm."""

    def __init__(self, steps: int):
        self.steps, self.next = steps, 0

    def update(self, done: int, dual: float, mapl: float, seconds: float) -> None:
        if done >= self.next or done == self.steps:
            print(f"ENOT step {done}/{self.steps}: dual loss {dual:.4g}, map loss {mapl:.4g}, {seconds:.0f} s",
                  file=sys.stderr, flush=True)
            self.next = done + max(1, self.steps // 10)


class _TqdmBar:
    def __init__(self, tqdm: Any, steps: int):
        self.bar, self.done = tqdm(total=steps, desc="ENOT", unit="step"), 0

    def update(self, done: int, dual: float, mapl: float, seconds: float) -> None:
        self.bar.update(done - self.done)
        self.bar.set_postfix(dual=f"{dual:.4g}", map=f"{mapl:.4g}", refresh=False)
        self.done = done

    def close(self) -> None:
        self.bar.close()


def _progress_bar(steps: int) -> Any:
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return _PlainBar(steps)
    return _TqdmBar(tqdm, steps)
