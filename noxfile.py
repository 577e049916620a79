"""nox sessions: one per backend, plus the whole suite, the demo, the docs and the benchmarks.

PyTorch is pinned to the CPU build (``torch==2.13.0``); plain pip with the
virtualenv backend is what finds it (uv would fetch a multi-GB CUDA build).
"""

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests"]
TORCH = "torch==2.13.0"
PYTEST = ("pytest", "-n", "auto", "tests")


@nox.session(name="tests-numpy")
def tests_numpy(session):
    """NumPy and array-api-strict only (proves the core needs no framework)."""
    session.install(".[test]")
    session.run(*PYTEST)


@nox.session(name="tests-torch")
def tests_torch(session):
    session.install(".[test,torch]", TORCH)
    session.run(*PYTEST)


@nox.session(name="tests-jax")
def tests_jax(session):
    session.install(".[test,jax]")
    session.run(*PYTEST)


@nox.session(name="tests-cupy")
def tests_cupy(session):
    """Needs a CUDA GPU; elsewhere the CuPy cases skip."""
    session.install(".[test,cupy]")
    session.run(*PYTEST)


@nox.session
def tests(session):
    """Every CPU backend: the README's test line."""
    session.install(".[test,torch,jax]", TORCH)
    session.run(*PYTEST)


@nox.session
def demo(session):
    session.install(".[torch,jax,demo]", TORCH)
    session.run("python", "-m", "softk", "demo")


@nox.session
def docs(session):
    session.install(".[docs,torch,jax]", TORCH)
    session.run("python", "-m", "sphinx", "-W", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session):
    session.install(".[bench,torch,jax]", TORCH)
    session.run("python", "asv_bench/compare_peers.py", *session.posargs)
    session.chdir("asv_bench")
    session.run("asv", "run", "--python=same", "--quick", "--show-stderr")
