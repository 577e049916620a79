"""nox sessions: one per backend, plus the whole suite, the demo, the docs, lint, type checks and the benchmarks.

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
    """The asv suite on the working tree, filed under HEAD, then the HTML dashboard (asv_bench/html).

    ``nox -s bench -- --fast`` takes one sample per case; ``nox -s bench -- HEAD~1 HEAD``
    benchmarks two commits' own source (see asv_bench/bench.py).
    """
    session.install("-e", ".[bench,torch,jax]", TORCH)
    session.run("python", "asv_bench/bench.py", "--publish", *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session):
    """mypy over the package (configured in pyproject.toml)."""
    session.install("-e", ".", "mypy")
    session.run("mypy")
