"""Command line: ``python -m softk demo`` (also the ``softk`` console script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "demo":
        print("usage: softk demo [--help]\n\n  demo   every operator on every installed backend: agreement, gradient checks, timings, figures")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from softk.demo import main as demo_main  # the demo lives outside the framework-free core

    return demo_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
