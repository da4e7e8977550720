"""``harness leaderboard --runs runs/ [--task T] [--out leaderboards/] [--min-seeds 2]
[--baseline FILE ...]``: build every board the run records support and write
``<out>/<slug>.md`` plus its PNGs.

Runs left out (still running, corrupt, mixed settings, ...) are listed by name on the boards
and on stderr. Exit codes: 0 boards written; 1 no board could be built; 2 a user error
(e.g. the runs directory does not exist).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.leaderboard import Board, attach_baselines, build_all
from harness.leaderboard_md import render_markdown
from harness.leaderboard_runs import LeftOut, load_baseline
from harness.plots import plot_board
from harness.records import atomic_write_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="build leaderboards (markdown + plots) from runs/")
    add_build_options(p, out_default="leaderboards")
    p.set_defaults(func=run)


def add_build_options(p: argparse.ArgumentParser, out_default: str | None) -> None:
    """Options shared with ``harness publish``."""
    add_board_options(p)
    p.add_argument("--out", default=out_default,
                   help=f"output directory (default: {out_default or 'the repo leaderboards/'})")
    p.add_argument("--baseline", action="append", default=[], type=Path, metavar="FILE",
                   help="a pre-training result (harness eval --model M --task T --out FILE) "
                        "shown as a starting point on the boards of its task; repeatable")
    p.add_argument("--no-plots", action="store_true", help="markdown only, no PNGs")


def add_board_options(p: argparse.ArgumentParser) -> None:
    """How boards are built from runs/ (shared with ``harness claims``)."""
    p.add_argument("--runs", default="runs", help="directory of run records (default: runs)")
    p.add_argument("--task", default=None, help="only boards of this task")
    p.add_argument("--min-seeds", type=int, default=2,
                   help="seeds a method (and uniform) need to be compared (default: 2)")
    p.add_argument("--bootstrap", type=int, default=10_000,
                   help="paired-bootstrap resamples B (default: 10000)")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the bootstrap generator (default: 0)")
    p.add_argument("--group-by", default=None, metavar="FIELD,FIELD",
                   help="config fields that define a board (default: every field except "
                        "method, seed, method_params); runs differing on others are left out")


def build_from_args(args: argparse.Namespace) -> tuple[list[Board], list[LeftOut]]:
    if args.min_seeds < 1:
        raise HarnessError(f"--min-seeds {args.min_seeds}: must be ≥ 1")
    if args.bootstrap < 1:
        raise HarnessError(f"--bootstrap {args.bootstrap}: must be ≥ 1")
    baselines = [load_baseline(path) for path in getattr(args, "baseline", ())]
    boards, left_out = build_all(
        Path(args.runs), task=args.task, min_seeds=args.min_seeds, n_boot=args.bootstrap,
        boot_seed=args.bootstrap_seed, group_by=_group_by(args.group_by),
    )
    boards, unused = attach_baselines(boards, baselines)
    for rec, why in unused:
        print(f"baseline {rec.path} is on no board: {why}", file=sys.stderr)
    return boards, left_out


def _group_by(text: str | None) -> list[str] | None:
    if text is None:
        return None
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in fields]
    if unknown or not keys:
        raise HarnessError(f"--group-by {text!r}: unknown field(s) {', '.join(unknown) or '-'};"
                           f" choose from: {', '.join(fields)}")
    return keys


def write_boards(boards: Sequence[Board], out_dir: Path, plots: bool = True) -> list[Path]:
    """Write ``<out_dir>/<slug>.md`` (and its PNGs) for every board; return the paths."""
    out_dir = Path(out_dir)
    written = []
    for board in boards:
        md = out_dir / f"{board.slug}.md"
        atomic_write_text(md, render_markdown(board, plots=plots))
        written.append(md)
        if plots:
            written.extend(plot_board(board, out_dir))
    return written


def report(boards: Sequence[Board], left_out: Sequence[LeftOut], written: Sequence[Path],
           runs: str) -> int:
    """Print where things went and what was left out; the exit code."""
    for x in left_out:
        print(f"left out {x.run_id}: {x.reason}", file=sys.stderr)
    if not boards:
        print(f"no leaderboard: no complete run records in {runs}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    boards, left_out = build_from_args(args)
    written = write_boards(boards, Path(args.out), plots=not args.no_plots)
    return report(boards, left_out, written, args.runs)
