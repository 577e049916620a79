"""Training through a differentiable beam search (SOFT paper, section 4): exposure bias on a toy task.

Task: copy a sequence of ``LENGTH`` tokens over ``VOCAB`` symbols. The inputs
are a Markov chain: each token is the previous one plus 1 (mod ``VOCAB``) with
probability ``P_RUN``, otherwise uniform. A GRU encoder reads the input and
hands its last state to a GRU decoder, which sees its previous output token.

Under teacher forcing the previous *reference* token predicts the next one
most of the time, so the decoder learns to lean on it. At test time it is fed
its own outputs: after one mistake at a jump of the chain it keeps counting
from the wrong token, and the errors compound (exposure bias).

Two decoders of the same size get the same number of Adam steps:

* ``teacher forcing``: cross-entropy of the reference given the reference prefix;
* ``+ soft beam search``: the same loss, plus (after the first ``WARMUP``
  fraction of the steps) the cross-entropy of the reference along the top beam
  of ``softk.beam_search`` (sorted soft top-k, ``k`` beams), i.e. given the
  decoder's *own* (soft) prefix; the gradient also flows through the soft
  selection of the beams. The decoder's log-probabilities are clipped at
  ``LOGP_FLOOR`` to bound the candidates' range (and so the soft width).

Both are decoded with the hard beam search (``softk.beam_search(..., hard=True)``).
Metrics on fresh test sequences: token accuracy (the fraction of positions
right, a BLEU-like measure) and sequence accuracy (all positions right).

``python examples/beam_search.py [--seeds 3] [--steps 600] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import softk

VOCAB, LENGTH, P_RUN, HIDDEN, EMBED = 12, 8, 0.8, 24, 16
BEAMS, EPSILON, BATCH, LR, TEST = 3, 0.01, 64, 3e-3, 2000
WARMUP = 0.5  # the soft-beam loss joins after this fraction of the steps (teacher forcing alone before)
LOGP_FLOOR = -8.0  # clip log-probabilities: bounds the candidates' range, hence the soft width (without it training diverged)


def make_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` Markov-chain sequences: ``x_t = x_{t-1} + 1 (mod VOCAB)`` w.p. ``P_RUN``, else uniform."""
    x = np.empty((n, LENGTH), dtype=np.int64)
    x[:, 0] = rng.integers(VOCAB, size=n)
    for t in range(1, LENGTH):
        run = rng.random(n) < P_RUN
        x[:, t] = np.where(run, (x[:, t - 1] + 1) % VOCAB, rng.integers(VOCAB, size=n))
    return x


class Seq2Seq:
    """GRU encoder -> GRU decoder whose input is the previous token, given as a (soft) one-hot row."""

    def __init__(self, seed: int):
        import torch

        torch.manual_seed(seed)
        nn = torch.nn
        self.enc_embed = nn.Embedding(VOCAB, EMBED)
        self.encoder = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.dec_embed = nn.Parameter(torch.randn(VOCAB, EMBED) / EMBED**0.5)
        self.bos = nn.Parameter(torch.zeros(EMBED))
        self.cell = nn.GRUCell(EMBED, HIDDEN)
        self.out = nn.Linear(HIDDEN, VOCAB)
        self.modules = [self.enc_embed, self.encoder, self.cell, self.out]

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()] + [self.dec_embed, self.bos]

    def encode(self, x):
        return self.encoder(self.enc_embed(x))[1][0]  # (B, H)

    def step(self, tokens, h):
        """``softk.beam_search`` step: ``tokens`` None (start) or (B, k, V) soft one-hot; ``h`` (B, [k,] H)."""
        import torch

        inp = self.bos.expand(*h.shape[:-1], EMBED) if tokens is None else tokens @ self.dec_embed
        h = self.cell(inp.reshape(-1, EMBED), h.reshape(-1, HIDDEN)).reshape(h.shape)
        logp = torch.log_softmax(self.out(h), dim=-1).clamp(min=LOGP_FLOOR)
        return logp, h

    def teacher_forced_logp(self, x, y):
        """(B, T, V) log-probabilities of each position given the reference prefix."""
        import torch

        onehot = torch.nn.functional.one_hot(y, VOCAB).to(torch.float32)
        h, tokens, out = self.encode(x), None, []
        for t in range(LENGTH):
            logp, h = self.step(tokens, h)
            out.append(logp)
            tokens = onehot[:, t]
        return torch.stack(out, dim=1)


def train(
    seed: int, steps: int, soft_beam: bool, beams: int = BEAMS, epsilon: float = EPSILON, warmup: float = WARMUP
) -> Seq2Seq:
    import torch

    model = Seq2Seq(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    for i in range(steps):
        x = torch.asarray(make_data(rng, BATCH))
        y = x  # copy task
        logp = model.teacher_forced_logp(x, y)
        loss = -logp.gather(-1, y[..., None]).mean()
        if soft_beam and i >= warmup * steps:
            out = softk.beam_search(model.step, model.encode(x), beams, LENGTH, epsilon=epsilon)
            top = out.log_probs[:, 0]  # (B, T, V): the model's log-probs along the top soft beam, own prefix
            loss = loss - top.gather(-1, y[..., None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def evaluate(model: Seq2Seq, seed: int, beams: int = BEAMS) -> tuple[float, float, float]:
    """(token accuracy, sequence accuracy) of the hard beam search, and the teacher-forced token accuracy."""
    import torch

    x = torch.asarray(make_data(np.random.default_rng(10_000 + seed), TEST))
    with torch.no_grad():
        out = softk.beam_search(model.step, model.encode(x), beams, LENGTH, hard=True)
        pred = out.tokens[:, 0].argmax(-1)
        tf = model.teacher_forced_logp(x, x).argmax(-1)
    right = pred == x
    return float(right.float().mean()), float(right.all(-1).float().mean()), float((tf == x).float().mean())


def run(
    seeds: int, steps: int, beams: int = BEAMS, epsilon: float = EPSILON, warmup: float = WARMUP
) -> dict[str, list[tuple[float, float, float]]]:
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[tuple[float, float, float]]] = {"teacher forcing": [], "+ soft beam search": []}
    for seed in range(seeds):
        for name, soft in (("teacher forcing", False), ("+ soft beam search", True)):
            results[name].append(evaluate(train(seed, steps, soft, beams, epsilon, warmup), seed, beams))
    return results


def table(results: dict[str, list[tuple[float, float, float]]]) -> str:
    def cell(values):
        return f"{statistics.mean(values):.3f} +- {statistics.pstdev(values):.3f}"

    lines = [
        "| training | token acc. (beam) | sequence acc. (beam) | token acc. (teacher-forced) |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        cols = list(zip(*rows))
        lines.append(f"| {name} | {cell(cols[0])} | {cell(cols[1])} | {cell(cols[2])} |")
    per_seed = ", ".join(
        f"{a[1]:.3f}/{b[1]:.3f}" for a, b in zip(results["teacher forcing"], results["+ soft beam search"])
    )
    lines.append(f"sequence accuracy per seed (teacher forcing / + soft beam search): {per_seed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--beams", type=int, default=BEAMS)
    parser.add_argument("--epsilon", type=float, default=EPSILON)
    parser.add_argument("--warmup", type=float, default=WARMUP, help="fraction of teacher-forcing-only steps")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = 1, 20
    start = time.perf_counter()
    results = run(args.seeds, args.steps, args.beams, args.epsilon, args.warmup)
    print(
        f"copy a Markov chain (V={VOCAB}, T={LENGTH}, p_run={P_RUN}), GRU {HIDDEN}, {args.steps} Adam steps, "
        f"batch {BATCH}, k={args.beams} beams, eps={args.epsilon}, warmup {args.warmup}, {args.seeds} seed(s), "
        f"{TEST} test sequences"
    )
    print(table(results))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
