"""Run the asv suite and file the results under a commit, so that asv keeps a history.

    python asv_bench/bench.py                      # the working tree, filed under HEAD
    python asv_bench/bench.py HEAD~1 HEAD          # each commit's own source, one after the other
    python asv_bench/bench.py --fast --bench Sinkhorn HEAD~1 HEAD   # one sample per case (still saved)
    python asv_bench/bench.py --publish            # then write the HTML dashboard (asv_bench/html)

asv runs in the current interpreter (``environment_type: existing``), which
must have softk's dependencies and the peers installed (``pip install -e
".[bench,torch,jax]"``). With no commit given it benchmarks the softk that
this interpreter imports (the working tree, after ``pip install -e .``) and
files the results under ``HEAD`` (a warning says when the tree has
uncommitted changes). For a named commit, that commit's ``softk/``,
``backends/`` and ``demo/`` are exported (``git archive``) to a temporary
folder laid out as the installed package and put first on the benchmark
processes' path (``ASV_PYTHONPATH``); the benchmarks themselves always come
from the working tree. Results accumulate in ``asv_bench/results/``; compare
two commits with ``asv compare C1 C2`` (run in ``asv_bench/``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# Source folder in the repository -> where the installed package has it.
LAYOUT = {"softk": "softk", "backends": "softk/backends", "demo": "softk/demo"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export(commit: str, dest: pathlib.Path) -> None:
    """``commit``'s package source under ``dest``, laid out as ``pip install`` would."""
    archive = dest / "src.tar"
    folders = [f for f in LAYOUT if git("ls-tree", "--name-only", commit, f)]
    subprocess.run(["git", "archive", "-o", str(archive), commit, *folders], cwd=ROOT, check=True)
    shutil.unpack_archive(archive, dest / "src")
    for folder, target in LAYOUT.items():
        if (dest / "src" / folder).exists():
            shutil.copytree(dest / "src" / folder, dest / "pkg" / target, dirs_exist_ok=True)


def asv(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "asv", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=HERE, check=True, env=env)


def run(commit: str | None, options: list[str]) -> None:
    sha = git("rev-parse", commit or "HEAD")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        if commit is None:
            if git("status", "--porcelain", "--untracked-files=no", "--", *LAYOUT):
                print(f"warning: uncommitted changes in {', '.join(LAYOUT)}: filed under {sha[:8]} all the same")
        else:
            export(sha, pathlib.Path(tmp))
            env["ASV_PYTHONPATH"] = str(pathlib.Path(tmp) / "pkg")
        asv("run", "--python=same", "--set-commit-hash", sha, "--show-stderr", *options, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="*", help="commits to benchmark (default: the working tree, as HEAD)")
    parser.add_argument("--bench", action="append", default=[], help="regex of benchmark names (repeatable)")
    parser.add_argument("--fast", action="store_true", help="one sample of one call per case (results still saved)")
    parser.add_argument("--publish", action="store_true", help="write the HTML dashboard afterwards")
    args = parser.parse_args(argv)
    asv("machine", "--yes")
    options = [opt for regex in args.bench for opt in ("--bench", regex)]
    if args.fast:
        options += ["-a", "repeat=1", "-a", "number=1", "-a", "rounds=1"]
    for commit in args.commits or [None]:
        run(commit, options)
    if args.publish:
        asv("publish")
        print(f"dashboard: {HERE / 'html' / 'index.html'} (asv preview serves it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
