"""Training through a differentiable beam search (SOFT paper, section 4): exposure bias on a toy task.

Task (denoise a Markov chain): the clean sequence ``x`` has ``LENGTH`` tokens
over ``VOCAB`` symbols; each token is the previous one plus 1 (mod ``VOCAB``)
with probability ``P_RUN``, otherwise uniform (a *jump*). The model sees a
noisy copy ``s``: each token replaced by a uniform one with probability
``NOISE``, and must output ``x``. A causal GRU encoder reads ``s``; at step
``t`` the GRU decoder gets the encoder's state at ``t`` (it has seen
``s_0 .. s_t``) and its own previous output token.

Why exposure bias bites: given the *reference* prefix, the previous token is a
sufficient statistic (the chain is Markov), and when ``s_t`` disagrees with
``x_{t-1} + 1`` a run with a noisy token is likelier than a jump, so teacher
forcing learns "previous token + 1" and to ignore the history of ``s``. At
test time the decoder reads its *own* previous token: once it misses a jump it
keeps counting from the wrong token, every later ``s_t`` disagrees, and it
never recovers. The history of ``s`` (several agreeing tokens in a row) is what
would tell it that it went wrong, but teacher forcing never needs it.

Three decoders of the same size get the same number of Adam steps:

* ``teacher forcing``: cross-entropy of the reference given the reference prefix;
* ``+ soft beam search``: the same loss, plus (after the first ``WARMUP``
  fraction of the steps) the cross-entropy of the reference along the top beam
  of ``softk.beam_search`` (sorted soft top-k, ``k`` beams), i.e. given the
  decoder's *own* (soft) prefix; the gradient also flows through the soft
  selection of the beams. Log-probabilities are clipped at ``LOGP_FLOOR`` to
  bound the candidates' range (and so the soft width).
* ``+ hard beam search`` (control): the same extra loss along the top beam of
  the ordinary beam search (``hard=True``): own prefixes, but no gradient
  through the selection.

All are decoded with the hard beam search (``k`` beams) and greedily
(``k = 1``). Metrics on fresh test sequences: token accuracy (the fraction of
positions right, a BLEU-like measure), sequence accuracy (all positions
right), and the teacher-forced token accuracy (reference prefixes).

``python examples/beam_search.py [--seeds 3] [--steps 800] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import softk

VOCAB, LENGTH, P_RUN, NOISE = 10, 12, 0.85, 0.3
HIDDEN, ENC_HIDDEN, EMBED = 24, 12, 12
BEAMS, EPSILON, BATCH, LR, TEST = 3, 0.01, 64, 3e-3, 2000
WARMUP = 0.5  # the beam loss joins after this fraction of the steps (teacher forcing alone before)
LOGP_FLOOR = -8.0  # clip log-probabilities: bounds the candidates' range, hence the soft width
MODES = {"teacher forcing": None, "+ soft beam search": "soft", "+ hard beam search (control)": "hard"}


def make_data(rng: np.random.Generator, n: int):
    """``(s, x)``, ``(n, LENGTH)`` int64 tensors: the noisy input and the clean Markov chain."""
    import torch

    x = np.empty((n, LENGTH), dtype=np.int64)
    x[:, 0] = rng.integers(VOCAB, size=n)
    for t in range(1, LENGTH):
        run = rng.random(n) < P_RUN
        x[:, t] = np.where(run, (x[:, t - 1] + 1) % VOCAB, rng.integers(VOCAB, size=n))
    s = np.where(rng.random((n, LENGTH)) < NOISE, rng.integers(VOCAB, size=(n, LENGTH)), x)
    return torch.asarray(s), torch.asarray(x)


class Tagger:
    """Causal GRU encoder over ``s``; GRU decoder fed the encoder state at ``t`` and its previous token.

    The decoder state is ``(h, position one-hot, encoder states)``, so one step
    function serves teacher forcing and ``softk.beam_search`` (which mixes the
    states of the beams: the position and encoder states are equal across
    beams, so mixing leaves them unchanged).
    """

    def __init__(self, seed: int):
        import torch

        torch.manual_seed(seed)
        nn = torch.nn
        self.src_embed = nn.Embedding(VOCAB, EMBED)
        self.encoder = nn.GRU(EMBED, ENC_HIDDEN, batch_first=True)
        self.dec_embed = nn.Parameter(torch.randn(VOCAB, EMBED) / EMBED**0.5)
        self.bos = nn.Parameter(torch.zeros(EMBED))
        self.cell = nn.GRUCell(EMBED + ENC_HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, VOCAB)
        self.modules = [self.src_embed, self.encoder, self.cell, self.out]

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()] + [self.dec_embed, self.bos]

    def encode(self, s):
        import torch

        feats = self.encoder(self.src_embed(s))[0]  # (B, T, ENC_HIDDEN): state after s_0 .. s_t
        pos = torch.zeros(s.shape[0], LENGTH)
        pos[:, 0] = 1.0
        return torch.zeros(s.shape[0], HIDDEN), pos, feats

    def step(self, tokens, state):
        """``softk.beam_search`` step: ``tokens`` None (start) or (B, k, V) soft one-hot; state (B, [k,] ...)."""
        import torch

        h, pos, feats = state
        inp = self.bos.expand(*h.shape[:-1], EMBED) if tokens is None else tokens @ self.dec_embed
        z = torch.cat([inp, (pos[..., None] * feats).sum(-2)], dim=-1)
        h = self.cell(z.reshape(-1, z.shape[-1]), h.reshape(-1, HIDDEN)).reshape(h.shape)
        logp = torch.log_softmax(self.out(h), dim=-1).clamp(min=LOGP_FLOOR)
        return logp, (h, torch.roll(pos, 1, dims=-1), feats)

    def teacher_forced_logp(self, s, y):
        """(B, T, V) log-probabilities of each position given the reference prefix."""
        import torch

        onehot = torch.nn.functional.one_hot(y, VOCAB).to(torch.float32)
        state, tokens, out = self.encode(s), None, []
        for t in range(LENGTH):
            logp, state = self.step(tokens, state)
            out.append(logp)
            tokens = onehot[:, t]
        return torch.stack(out, dim=1)


def train(
    seed: int, steps: int, mode: str | None, beams: int = BEAMS, epsilon: float = EPSILON, warmup: float = WARMUP
) -> Tagger:
    """``mode``: None (teacher forcing), ``"soft"`` or ``"hard"`` (add the loss along the top beam)."""
    import torch

    model = Tagger(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    for i in range(steps):
        s, y = make_data(rng, BATCH)
        loss = -model.teacher_forced_logp(s, y).gather(-1, y[..., None]).mean()
        if mode is not None and i >= warmup * steps:
            out = softk.beam_search(
                model.step, model.encode(s), beams, LENGTH, epsilon=epsilon, hard=mode == "hard"
            )
            top = out.log_probs[:, 0]  # (B, T, V): the model's log-probs along the top beam, own prefix
            loss = loss - top.gather(-1, y[..., None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def evaluate(model: Tagger, seed: int, beams: int = BEAMS) -> tuple[float, ...]:
    """Token and sequence accuracy of the hard beam search, of greedy decoding, and teacher-forced token accuracy."""
    import torch

    s, x = make_data(np.random.default_rng(10_000 + seed), TEST)
    metrics = []
    with torch.no_grad():
        for k in (beams, 1):
            pred = softk.beam_search(model.step, model.encode(s), k, LENGTH, hard=True).tokens[:, 0].argmax(-1)
            right = pred == x
            metrics += [float(right.float().mean()), float(right.all(-1).float().mean())]
        tf = model.teacher_forced_logp(s, x).argmax(-1)
    return (*metrics, float((tf == x).float().mean()))


def run(
    seeds: int, steps: int, beams: int = BEAMS, epsilon: float = EPSILON, warmup: float = WARMUP
) -> tuple[dict[str, list[tuple[float, ...]]], dict[str, list[float]]]:
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in MODES}
    walls: dict[str, list[float]] = {name: [] for name in MODES}
    for seed in range(seeds):
        for name, mode in MODES.items():
            start = time.perf_counter()
            model = train(seed, steps, mode, beams, epsilon, warmup)
            walls[name].append(time.perf_counter() - start)
            results[name].append(evaluate(model, seed, beams))
    return results, walls


def table(results: dict[str, list[tuple[float, ...]]], walls: dict[str, list[float]], beams: int = BEAMS) -> str:
    def cell(values):
        return f"{statistics.mean(values):.3f} +- {statistics.pstdev(values):.3f}"

    lines = [
        f"| training | token acc. (beam {beams}) | sequence acc. (beam {beams}) | token acc. (greedy) "
        "| sequence acc. (greedy) | token acc. (teacher-forced) | training time per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        cols = list(zip(*rows))
        lines.append(f"| {name} | " + " | ".join(cell(c) for c in cols) + f" | {statistics.mean(walls[name]):.0f} s |")
    for what, col in (("token", 0), ("sequence", 1)):
        per_seed = ", ".join(
            "/".join(f"{results[name][i][col]:.3f}" for name in MODES) for i in range(len(results["teacher forcing"]))
        )
        lines.append(f"{what} accuracy (beam) per seed ({' / '.join(MODES)}): {per_seed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--beams", type=int, default=BEAMS)
    parser.add_argument("--epsilon", type=float, default=EPSILON)
    parser.add_argument("--warmup", type=float, default=WARMUP, help="fraction of teacher-forcing-only steps")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = 1, 20
    start = time.perf_counter()
    results, walls = run(args.seeds, args.steps, args.beams, args.epsilon, args.warmup)
    print(
        f"denoise a Markov chain (V={VOCAB}, T={LENGTH}, p_run={P_RUN}, noise={NOISE}), GRU {HIDDEN}, "
        f"{args.steps} Adam steps, batch {BATCH}, k={args.beams} beams, eps={args.epsilon}, warmup {args.warmup}, "
        f"{args.seeds} seed(s), {TEST} test sequences"
    )
    print(table(results, walls, args.beams))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
