"""``metajax plot DIR``: the figures of a run folder, or the chart of ``metajax bench`` records."""

from __future__ import annotations

import argparse
from pathlib import Path

from metajax.plots import plot_benchmark, plot_run


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``metajax plot DIR [--out FOLDER]`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("plot", help="write the figures (PNG) of a train or continual run folder")
    p.add_argument(
        "run", type=Path, metavar="DIR", help="the --out folder of a train or continual run, or a bench .jsonl file"
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="FOLDER", help="folder for the PNGs (default: the run folder)"
    )
    return p


def run(args: argparse.Namespace) -> list[Path]:
    """Run ``metajax plot``: write the PNGs, print their paths (bad input raises the library's error)."""
    if args.run.suffix == ".jsonl":
        target = Path(args.out or args.run.parent) / (args.run.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        plot_benchmark(args.run, target)
        written = [target]
    else:
        written = plot_run(args.run, args.out)
    for path in written:
        print(f"wrote {path}")
    return written


def command(args: argparse.Namespace) -> int:
    """``metajax plot``: :func:`run`, exit status 0."""
    run(args)
    return 0
