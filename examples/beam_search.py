"""Training through a differentiable beam search (SOFT paper, section 4): which losses gain from the soft selection.

Task (denoise a Markov chain): the clean sequence ``x`` has ``LENGTH`` tokens
over ``VOCAB`` symbols; each token is the previous one plus 1 (mod ``VOCAB``)
with probability ``P_RUN``, otherwise uniform (a *jump*). The model sees a
noisy copy ``s``: each token replaced by a uniform one with probability
``NOISE``, and must output ``x``. A causal GRU encoder reads ``s``; at step
``t`` the GRU decoder gets the encoder's state at ``t`` (it has seen
``s_0 .. s_t``) and its own previous output token. The evidence for a jump at
``t`` comes later (``s_{t+1}, s_{t+2}`` agree with it), so deciding token by
token is not enough: the search has to keep both readings and the sequence
scores have to rank them once the evidence is in.

Every decoder has the same size and the same Adam steps. The first ``WARMUP``
fraction of the steps is teacher forcing for all rows (trained once per seed
and copied, Adam state and data stream included); afterwards each row adds
extra loss terms to the teacher-forcing cross-entropy:

* ``beam CE``: the cross-entropy of the reference along the top beam
  (``out.log_probs[:, 0]``), i.e. given the decoder's *own* prefix;
* ``sequence loss``: ``log(exp(s_ref) + sum_r exp(s_r)) - s_ref`` with ``s_ref``
  the reference's score (the sum of its teacher-forced log-probabilities) and
  ``s_r = out.scores[:, r]`` the ``k`` beams' scores: the sequences the search
  finds must score below the reference (as in beam-search optimisation);
* ``soft accuracy``: ``-mean_t out.tokens[:, 0, t, x_t]``, the expected token
  accuracy of the top beam. On the hard search the tokens are constant
  one-hots and this loss has no gradient: only the soft selection can
  optimise it.

Each term runs on the ordinary beam search (``hard``: the gradient flows
through the log-probabilities and scores of the chosen beams only) or on the
soft one, ``softk.beam_search(..., epsilon=eps)`` (the gradient also flows
through the selection); ``eps`` is per row, the better of 0.01 and 0.05 in
short runs. Each soft row has a hard control row with the same loss (the soft
accuracy, which has no hard version, is compared with the hard beam CE added
to the same sequence loss). Log-probabilities are clipped at ``LOGP_FLOOR`` to
bound the candidates' range (and so the soft width). All rows are decoded with
the hard beam search (``k`` beams) and greedily (``k = 1``). Metrics on fresh
test sequences: token accuracy, sequence accuracy (all positions right), and
the teacher-forced token accuracy (reference prefixes).

``python examples/beam_search.py [--seeds 5] [--steps 800] [--test 2000] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np

import softk

VOCAB, LENGTH, P_RUN, NOISE = 10, 12, 0.85, 0.3
HIDDEN, ENC_HIDDEN, EMBED = 24, 12, 12
BEAMS, BATCH, LR, TEST = 3, 64, 3e-3, 2000
WARMUP = 0.5  # the extra losses join after this fraction of the steps (teacher forcing alone before)
LOGP_FLOOR = -8.0  # clip log-probabilities: bounds the candidates' range, hence the soft width
# row name -> the extra loss terms, (loss, epsilon): epsilon None = the ordinary (hard) beam search
MODES = {
    "teacher forcing": (),
    "+ beam CE, hard (control)": (("ce", None),),
    "+ beam CE, soft (eps 0.01)": (("ce", 0.01),),
    "+ sequence loss, hard (control)": (("seq", None),),
    "+ sequence loss, soft (eps 0.05)": (("seq", 0.05),),
    "+ sequence loss, hard + soft accuracy (eps 0.05)": (("seq", None), ("acc", 0.05)),
    "+ sequence loss, hard + beam CE, hard (control)": (("seq", None), ("ce", None)),
}


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


def loss_terms(model: Tagger, s, y, terms, beams: int = BEAMS):
    """Teacher-forcing cross-entropy plus the extra ``terms`` ((loss, epsilon or None for hard) pairs) on one batch."""
    import torch

    ref = model.teacher_forced_logp(s, y).gather(-1, y[..., None])[..., 0]  # (B, T)
    loss = -ref.mean()
    searches = {}
    for kind, epsilon in terms:
        if epsilon not in searches:
            searches[epsilon] = softk.beam_search(  # epsilon is not used when hard
                model.step, model.encode(s), beams, LENGTH, epsilon=epsilon or 1.0, hard=epsilon is None
            )
        out = searches[epsilon]
        if kind == "ce":  # the reference given the top beam's own prefix
            loss = loss - out.log_probs[:, 0].gather(-1, y[..., None]).mean()
        elif kind == "seq":  # the reference must outscore the beams
            s_ref = ref.sum(-1, keepdim=True)
            loss = loss + (torch.logsumexp(torch.cat([s_ref, out.scores], -1), -1) - s_ref[:, 0]).mean()
        elif kind == "acc":  # expected token accuracy of the top beam (no gradient when hard)
            loss = loss - out.tokens[:, 0].gather(-1, y[..., None]).mean()
        else:
            raise ValueError(f"unknown loss {kind!r}")
    return loss


def train_all(
    seed: int, steps: int, modes: dict = MODES, beams: int = BEAMS, warmup: float = WARMUP
) -> tuple[dict[str, Tagger], dict[str, float]]:
    """One model per row of ``modes``; the teacher-forcing warm-up is trained once and copied. Also the wall times."""
    import torch

    model = Tagger(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(int(warmup * steps)):
        s, y = make_data(rng, BATCH)
        loss = loss_terms(model, s, y, ())
        opt.zero_grad()
        loss.backward()
        opt.step()
    shared = time.perf_counter() - start
    models, walls = {}, {}
    for name, terms in modes.items():
        start = time.perf_counter()
        m, r = copy.deepcopy(model), copy.deepcopy(rng)
        o = torch.optim.Adam(m.parameters(), lr=LR)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict alone would share the moments
        for _ in range(steps - int(warmup * steps)):
            s, y = make_data(r, BATCH)
            loss = loss_terms(m, s, y, terms, beams)
            o.zero_grad()
            loss.backward()
            o.step()
        models[name], walls[name] = m, shared + time.perf_counter() - start
    return models, walls


def evaluate(model: Tagger, seed: int, beams: int = BEAMS, n_test: int = TEST) -> tuple[float, ...]:
    """Token and sequence accuracy of the hard beam search, of greedy decoding, and teacher-forced token accuracy."""
    import torch

    s, x = make_data(np.random.default_rng(10_000 + seed), n_test)
    metrics = []
    with torch.no_grad():
        for k in (beams, 1):
            pred = softk.beam_search(model.step, model.encode(s), k, LENGTH, hard=True).tokens[:, 0].argmax(-1)
            right = pred == x
            metrics += [float(right.float().mean()), float(right.all(-1).float().mean())]
        tf = model.teacher_forced_logp(s, x).argmax(-1)
    return (*metrics, float((tf == x).float().mean()))


def run(
    seeds: int,
    steps: int,
    beams: int = BEAMS,
    warmup: float = WARMUP,
    modes: dict = MODES,
    n_test: int = TEST,
) -> tuple[dict[str, list[tuple[float, ...]]], dict[str, list[float]]]:
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in modes}
    walls: dict[str, list[float]] = {name: [] for name in modes}
    for seed in range(seeds):
        models, wall = train_all(seed, steps, modes, beams, warmup)
        for name, model in models.items():
            walls[name].append(wall[name])
            results[name].append(evaluate(model, seed, beams, n_test))
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
    nseeds = len(next(iter(results.values())))
    lines += ["", f"Per seed, beam {beams} (token acc. / sequence acc.):", ""]
    lines.append("| training | " + " | ".join(f"seed {i}" for i in range(nseeds)) + " |")
    lines.append("|---|" + "---|" * nseeds)
    for name, rows in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[0]:.3f} / {r[1]:.3f}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--beams", type=int, default=BEAMS)
    parser.add_argument("--warmup", type=float, default=WARMUP, help="fraction of teacher-forcing-only steps")
    parser.add_argument("--test", type=int, default=TEST, help="fresh test sequences per seed")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps, 500 test sequences: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.test = 1, 20, 500
    start = time.perf_counter()
    results, walls = run(args.seeds, args.steps, args.beams, args.warmup, MODES, args.test)
    print(
        f"denoise a Markov chain (V={VOCAB}, T={LENGTH}, p_run={P_RUN}, noise={NOISE}), GRU {HIDDEN}, "
        f"{args.steps} Adam steps, batch {BATCH}, k={args.beams} beams, warmup {args.warmup}, "
        f"{args.seeds} seed(s), {args.test} test sequences"
    )
    print(table(results, walls, args.beams))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
