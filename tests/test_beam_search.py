"""softk.beam_search: the hard limit is beam search, the soft one is differentiable, on every framework."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pathlib
import subprocess
import sys

import array_api_compat
import numpy as np
import pytest

import softk

V, H = 5, 4
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "beam_search.py"


def make_params(seed: int, vocab: int = V, hidden: int = H) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.normal(size=(vocab, hidden)),
        "rec": rng.normal(size=(hidden, hidden)) / hidden**0.5,
        "out": 2.0 * rng.normal(size=(hidden, vocab)),
        "bos": rng.normal(size=(hidden,)),
    }


def make_step(p):
    """A tiny tanh RNN written on the array API: ``h' = tanh(emb(token) + h W)``, ``log_softmax(h' U)``."""

    def step(tokens, h):
        xp = array_api_compat.array_namespace(h)  # torch.max differs from the standard's max
        inp = p["bos"] if tokens is None else tokens @ p["emb"]
        h = xp.tanh(inp + h @ p["rec"])
        z = h @ p["out"]
        z = z - xp.max(z, axis=-1, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True)), h

    return step


def reference_beam_search(p, h0, k, length):
    """Plain beam search, one sequence at a time, with Python lists (ties: lower ``j * V + w``)."""
    step = make_step(p)
    seqs, scores = [], []
    for h_init in h0:
        lp, h = step(None, h_init)
        beams = [(0.0, [], lp, h)]
        for t in range(length):
            if t > 0:
                beams = [(s, seq, *step(np.eye(len(lp))[seq[-1]], h_)) for s, seq, _, h_ in beams]
            cands = [(s + lp[w], j * len(lp) + w, seq + [w], h) for j, (s, seq, lp, h) in enumerate(beams) for w in range(len(lp))]
            cands.sort(key=lambda c: (-c[0], c[1]))
            # a beam keeps its parent's state; the next step feeds it the beam's last token
            beams = [(c[0], c[2], None, c[3]) for c in cands[:k]]
        seqs.append([seq for _, seq, _, _ in beams])
        scores.append([s for s, _, _, _ in beams])
    return np.array(seqs), np.array(scores)


def test_reference_is_exhaustive_search_for_a_full_beam():
    """Sanity of the reference: with k = V^(T-1) beams nothing is pruned before the last step."""
    p, h0 = make_params(0), np.random.default_rng(1).normal(size=(2, H))
    seqs, scores = reference_beam_search(p, h0, V, 2)
    step = make_step(p)
    for b in range(2):
        lp0, h1 = step(None, h0[b])
        full = np.array([[lp0[u] + step(np.eye(V)[u], h1)[0][w] for w in range(V)] for u in range(V)])
        best = np.sort(full.ravel())[::-1][:V]
        np.testing.assert_allclose(scores[b], best, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_hard_equals_plain_beam_search(seed, k):
    p, h0 = make_params(seed), np.random.default_rng(seed + 100).normal(size=(3, H))
    seqs, scores = reference_beam_search(p, h0, k, 4)
    out = softk.beam_search(make_step(p), h0, k, 4, hard=True)
    assert np.array_equal(out.tokens.argmax(-1), seqs)
    assert np.array_equal(out.tokens, np.eye(V)[seqs])  # exactly one-hot
    np.testing.assert_allclose(out.scores, scores, rtol=0, atol=1e-12)
    # the log-probs along each beam give its score back
    np.testing.assert_allclose((out.tokens * out.log_probs).sum((-2, -1)), scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_small_epsilon_is_hard_beam_search(seed, k):
    p, h0 = make_params(seed), np.random.default_rng(seed + 100).normal(size=(3, H))
    seqs, scores = reference_beam_search(p, h0, k, 4)
    out = softk.beam_search(make_step(p), h0, k, 4, epsilon=1e-6)
    assert np.array_equal(out.tokens.argmax(-1), seqs)
    assert np.abs(out.tokens - np.eye(V)[seqs]).max() < 1e-6
    np.testing.assert_allclose(out.scores, scores, rtol=0, atol=1e-6)
    # and a large epsilon is not: the soft beams blend candidates
    blurred = softk.beam_search(make_step(p), h0, k, 4, epsilon=0.5)
    assert np.abs(blurred.tokens - np.eye(V)[seqs]).max() > 0.1


def test_soft_beams_are_mixtures():
    """Soft tokens are distributions, scores are sorted, and the soft search is smooth in epsilon."""
    p, h0 = make_params(3), np.random.default_rng(3).normal(size=(2, H))
    out = softk.beam_search(make_step(p), h0, 3, 5, epsilon=0.05)
    assert out.tokens.shape == out.log_probs.shape == (2, 3, 5, V)
    assert out.scores.shape == (2, 3) and out.state.shape == (2, 3, H)
    np.testing.assert_allclose(out.tokens.sum(-1), 1.0, atol=1e-10)
    assert (out.tokens >= -1e-12).all()
    assert (np.diff(out.scores, axis=-1) <= 1e-12).all()  # beam 0 is the best


def test_tuple_state_and_batch_shapes():
    p = make_params(4)
    step = make_step(p)

    def step2(tokens, state):  # an LSTM-like pair; the second array rides along
        h, c = state
        lp, h = step(tokens, h)
        return lp, (h, c + 1.0)

    h0 = np.random.default_rng(4).normal(size=(2, 3, H))
    out = softk.beam_search(step2, (h0, np.zeros((2, 3, 2))), 2, 3, epsilon=0.05)
    assert out.scores.shape == (2, 3, 2) and out.tokens.shape == (2, 3, 2, 3, V)
    h, c = out.state
    assert h.shape == (2, 3, 2, H)
    np.testing.assert_allclose(c, 3.0)  # mixtures of equal states stay equal
    flat = softk.beam_search(step, h0.reshape(6, H), 2, 3, epsilon=0.05)
    np.testing.assert_allclose(out.scores.reshape(6, 2), flat.scores, atol=1e-12)


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_frameworks_agree_with_numpy(name):
    mod = pytest.importorskip(name)
    p, h0 = make_params(5), np.random.default_rng(5).normal(size=(2, H))
    expected = softk.beam_search(make_step(p), h0, 2, 4, epsilon=0.05)
    if name == "torch":
        conv = lambda a: mod.asarray(a, dtype=mod.float64)  # noqa: E731
    else:
        import jax.numpy as jnp

        conv = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    tp = {key: conv(val) for key, val in p.items()}
    for hard in (False, True):
        out = softk.beam_search(make_step(tp), conv(h0), 2, 4, epsilon=0.05, hard=hard)
        assert type(out.scores) is type(conv(h0)) and out.scores.dtype == conv(h0).dtype
        ref = expected if not hard else softk.beam_search(make_step(p), h0, 2, 4, hard=True)
        np.testing.assert_allclose(np.asarray(out.scores), ref.scores, atol=1e-9)
        np.testing.assert_allclose(np.asarray(out.tokens), ref.tokens, atol=1e-9)


def test_float32_torch():
    torch = pytest.importorskip("torch")
    p, h0 = make_params(6), np.random.default_rng(6).normal(size=(2, H))
    tp = {key: torch.asarray(val, dtype=torch.float32) for key, val in p.items()}
    out = softk.beam_search(make_step(tp), torch.asarray(h0, dtype=torch.float32), 2, 3, epsilon=0.05)
    assert out.scores.dtype == torch.float32
    ref = softk.beam_search(make_step(p), h0, 2, 3, epsilon=0.05)
    np.testing.assert_allclose(out.scores.numpy(), ref.scores, atol=1e-4)


def test_torch_gradcheck():
    torch = pytest.importorskip("torch")
    p, h0 = make_params(7, vocab=4, hidden=3), np.random.default_rng(7).normal(size=(2, 3))
    names = sorted(p)
    params = [torch.asarray(p[n], dtype=torch.float64).requires_grad_(True) for n in names]
    state = torch.asarray(h0, dtype=torch.float64).requires_grad_(True)

    def fn(*args):
        out = softk.beam_search(make_step(dict(zip(names, args[:-1]))), args[-1], 2, 3, epsilon=0.1)
        # the sequence scores and a loss on the top beam's log-probs, as in training
        return out.scores, (out.log_probs[:, 0] * torch.arange(4.0, dtype=torch.float64)).sum()

    assert torch.autograd.gradcheck(fn, (*params, state), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_selection_is_differentiated():
    """The soft scores' gradient is not the hard one's: it flows through the soft top-k too."""
    torch = pytest.importorskip("torch")
    p, h0 = make_params(8), np.random.default_rng(8).normal(size=(2, H))
    grads = []
    for kw in ({"hard": True}, {"epsilon": 0.2}):
        out_w = torch.asarray(p["out"]).requires_grad_(True)
        tp = {**{key: torch.asarray(val) for key, val in p.items()}, "out": out_w}
        softk.beam_search(make_step(tp), torch.asarray(h0), 2, 3, **kw).scores[:, 0].sum().backward()
        grads.append(out_w.grad)
    assert torch.isfinite(grads[1]).all() and (grads[0] - grads[1]).abs().max() > 1e-3


def test_jax_grad_matches_central_differences_under_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    p, h0 = make_params(9, vocab=4, hidden=3), np.random.default_rng(9).normal(size=(2, 3))
    weights = np.random.default_rng(10).normal(size=(2, 2))

    def loss(out_w, other, h):
        out = softk.beam_search(make_step({**other, "out": out_w}), h, 2, 3, epsilon=0.1)
        return jnp.sum(out.scores * weights)

    other = {key: jnp.asarray(val) for key, val in p.items() if key != "out"}
    w0, h = jnp.asarray(p["out"]), jnp.asarray(h0)
    value = jax.jit(loss)(w0, other, h)
    eager = loss(w0, other, h)
    np.testing.assert_allclose(float(value), float(eager), rtol=1e-12)
    grad = np.asarray(jax.jit(jax.grad(loss))(w0, other, h))
    fd = np.zeros_like(p["out"])
    for idx in np.ndindex(fd.shape):
        e = np.zeros_like(p["out"])
        e[idx] = 1e-6
        fd[idx] = (float(loss(w0 + e, other, h)) - float(loss(w0 - e, other, h))) / 2e-6
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def _bad_step(tokens, h):
    lp, h = make_step(make_params(0))(tokens, h)
    return (lp, h) if tokens is None else (lp[..., :-1], h)  # a token short after the first step


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": V}, ValueError, "k must satisfy 1 <= k <= V - 1 = 4"),
        ({"k": 0}, ValueError, "k must satisfy"),
        ({"k": 1.5}, TypeError, "k must be an integer"),
        ({"length": 0}, ValueError, "length must satisfy"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be finite and > 0"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"hard": 1}, TypeError, "hard must be a bool"),
        ({"step": "rnn"}, TypeError, "step must be a callable"),
        ({"step": _bad_step}, ValueError, "step must return log_probs"),
        ({"state": [[0.0, 1.0]]}, TypeError, "state"),
        ({"state": np.zeros((2, H), dtype=np.int64)}, TypeError, "state must have a real floating dtype"),
        ({"method": "magic"}, ValueError, "method"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    p = make_params(0)
    args = {"step": make_step(p), "state": np.zeros((2, H)), "k": 2, "length": 3, **kwargs}
    step, state, k, length = args.pop("step"), args.pop("state"), args.pop("k"), args.pop("length")
    with pytest.raises(error, match=match):
        softk.beam_search(step, state, k, length, **args)


def test_step_returning_a_wrong_state_raises():
    def step(tokens, h):
        lp, h2 = make_step(make_params(0))(tokens, h)
        return lp, h2[..., 0, :] if tokens is not None else h2

    with pytest.raises(ValueError, match="step must return a state"):
        softk.beam_search(step, np.zeros((2, H)), 2, 3)


def test_docstring_example():
    module = importlib.import_module("softk.beam")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def _example():
    spec = importlib.util.spec_from_file_location("beam_search_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_quick_mode_prints_its_table():
    pytest.importorskip("torch")
    run = subprocess.run([sys.executable, str(EXAMPLE), "--quick"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    names = _example().MODES
    rows = {}  # the first table: one summary row per training (the per-seed table repeats the names)
    for line in run.stdout.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert len(names) == 7 and "teacher forcing" in names
    for name in names:
        # the summary row: five metrics, each a mean +- std in [0, 1] (one seed: std 0)
        cells = rows[name].split(" | ")[1:6]
        means = [float(c.split(" +- ")[0]) for c in cells]
        assert all(0.0 <= m <= 1.0 for m in means) and all(c.endswith("+- 0.000") for c in cells), rows[name]
    # 20 teacher-forcing steps already beat chance (0.1) with reference prefixes
    assert float(rows["teacher forcing"].split(" | ")[5].split(" +- ")[0]) > 0.2
    # 10 steps of the sequence loss on the hard beams already lift the beam-3 token accuracy (0.38 -> 0.55 here)
    beam_tok = {name: float(rows[name].split(" | ")[1].split(" +- ")[0]) for name in names}
    assert beam_tok["+ sequence loss, hard (control)"] > beam_tok["teacher forcing"] + 0.05
    assert "Per seed, beam 3 (token acc. / sequence acc.):" in run.stdout and "| seed 0 |" in run.stdout


def test_example_losses():
    """The extra losses of the example: what gets a gradient from the hard and from the soft search."""
    torch = pytest.importorskip("torch")
    ex = _example()
    torch.set_num_threads(1)
    model = ex.Tagger(0)
    s, y = ex.make_data(np.random.default_rng(0), 8)

    def grads(terms):
        for p in model.parameters():
            p.grad = None
        loss = ex.loss_terms(model, s, y, terms)
        loss.backward()
        return float(loss), torch.cat([p.grad.ravel() for p in model.parameters()])

    tf_loss, tf_grad = grads(())
    # the expected accuracy of the top beam: constant under the hard search, a gradient under the soft one
    hard_loss, hard_grad = grads((("acc", None),))
    soft_loss, soft_grad = grads((("acc", 0.05),))
    assert -1.0 <= hard_loss - tf_loss <= 0.0 and torch.equal(hard_grad, tf_grad)
    assert -1.0 <= soft_loss - tf_loss <= 0.0 and (soft_grad - tf_grad).abs().max() > 1e-5
    # the sequence loss log(1 + sum_r exp(s_r - s_ref)) is positive and bounded by log(1 + k) + max_r (s_r - s_ref)
    seq_loss, seq_grad = grads((("seq", None),))
    assert 0.0 < seq_loss - tf_loss and (seq_grad - tf_grad).abs().max() > 1e-5
    with torch.no_grad():
        out = softk.beam_search(model.step, model.encode(s), ex.BEAMS, ex.LENGTH, hard=True)
        s_ref = model.teacher_forced_logp(s, y).gather(-1, y[..., None]).sum((-2, -1))
        bound = float((np.log(1 + ex.BEAMS) + (out.scores.max(-1).values - s_ref).clamp(min=0)).mean())
    assert seq_loss - tf_loss <= bound + 1e-5


def test_example_shared_warmup_is_plain_training():
    """Rows copy the teacher-forcing warm-up (model, Adam state, data stream): same as training from scratch."""
    torch = pytest.importorskip("torch")
    ex = _example()
    torch.set_num_threads(1)
    shared, _ = ex.train_all(0, 6, {"a": (), "b": ()}, warmup=0.5)
    alone, _ = ex.train_all(0, 6, {"a": ()}, warmup=0.0)
    for p, q, r in zip(shared["a"].parameters(), shared["b"].parameters(), alone["a"].parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


def _masked_bigram(xp, forbidden: int):
    """The docstring's bigram model with token ``forbidden`` given log-probability -inf at every step."""
    logits = np.array([[0.0, 2.0, 1.0, -1.0], [1.5, 0.0, 1.0, 0.2], [0.3, 0.1, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
    logp = xp.asarray(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    allowed = xp.asarray(np.arange(4) != forbidden)

    def step(tokens, state):
        lp = state if tokens is None else tokens @ logp
        return xp.where(allowed, lp, xp.full_like(lp, -float("inf"))), lp

    return step, xp.asarray(np.log(np.array([[0.5, 0.2, 0.2, 0.1]])))


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_masked_tokens_are_never_chosen_in_both_modes(name):
    xp = pytest.importorskip(name)
    step, start = _masked_bigram(xp, forbidden=1)
    hard = softk.beam_search(step, start, 2, 3, hard=True)
    soft = softk.beam_search(step, start, 2, 3, epsilon=1e-4)
    to_np = (lambda a: a.detach().numpy()) if name == "torch" else np.asarray
    np.testing.assert_allclose(to_np(hard.scores), [[-2.51695673, -3.20734106]], rtol=1e-8)  # plain beam search on tokens 0, 2, 3
    np.testing.assert_allclose(to_np(soft.scores), to_np(hard.scores), atol=1e-6)
    for out in (hard, soft):
        assert to_np(out.tokens)[..., 1].max() == 0.0  # the forbidden token has no weight
        lp = to_np(out.log_probs)
        assert not np.isnan(lp).any() and np.isneginf(lp[..., 1]).all()
    if name == "torch":
        start = start.clone().requires_grad_()
        step, _ = _masked_bigram(xp, forbidden=1)
        softk.beam_search(step, start, 2, 3, epsilon=0.05).scores.sum().backward()
        assert torch_finite(start.grad) and start.grad[0, 1] == 0.0


def torch_finite(t):
    return bool(t.isfinite().all())
