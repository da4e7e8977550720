"""Leaderboards (DESIGN §6): a pure function of run records.

:func:`build_leaderboards` reads ``runs/`` and returns one :class:`Board` per group of runs
that share every config field except ``method``, ``seed`` and ``method_params`` (so task,
model, budget, preset, engine and every hyper-parameter match), with one :class:`Row` per
method. :func:`render_markdown` (in :mod:`harness.leaderboard_md`) turns a board into a
markdown page; :mod:`harness.plots` draws its curves.

Row columns (accuracies are fractions here, % and pp in the markdown):

- accuracy: mean ± 95% t-interval over seeds of the final accuracy — ``final.json`` when every
  run of the board has per-problem final results, otherwise the last in-loop eval (the board
  says which);
- Δ vs uniform: paired over (problem, seed) with a bootstrap p-value (McNemar's exact test
  when only one seed pairs up); methods or a baseline with fewer than ``min_seeds`` seeds are
  marked and not compared;
- convergence: the first eval step whose seed-mean in-loop accuracy reaches uniform's final
  seed-mean in-loop accuracy, and the seed-mean cumulative FLOPs there;
- compute-matched accuracy: the seed-mean in-loop accuracy at the last eval step whose
  seed-mean cumulative FLOPs ≤ uniform's (seed-mean cumulative FLOPs at its last eval);
- overheads: mean per-step training FLOPs / wall seconds over uniform's, minus 1, in %.

The starting point: ``Board.start`` is the step-0 in-loop accuracy (before any update; the same
weights and greedy decoding for every run, so normally one value) when every run evaluated at
step 0 on the board's eval set, and each row's gain is its accuracy minus that. Baselines from
``harness eval --model M --task T --out FILE`` (:func:`attach_baselines`) are shown on the
boards of their task and task params, scored on the board's problems they cover.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.leaderboard_runs import BaselineRecord, LeftOut, RunRecord, flatten, scan_runs
from harness.stats import (
    CurvePoint,
    MeanCI,
    PairedResult,
    compute_matched_point,
    convergence_point,
    mcnemar_exact,
    mean_curve,
    overhead_pct,
    pair_by_problem,
    paired_bootstrap,
    t_interval,
)

BASELINE = "uniform"
#: Config fields that vary *within* a board (rows and seeds), never between boards.
NOT_GROUPED = ("method", "seed", "method_params")
#: Longest readable file-name slug before a hash stands in for the distinguishing settings.
MAX_SLUG = 96


@dataclass(frozen=True)
class Row:
    """One method on a board."""

    label: str
    method: str
    seeds: tuple[int, ...]
    accuracy: MeanCI
    marked: bool  # fewer than min_seeds seeds: shown, never compared
    paired: PairedResult | None
    paired_note: str  # why ``paired`` is None: "reference", "n<2", "no uniform", ...
    convergence: CurvePoint | None
    compute_matched: CurvePoint | None
    flops_overhead: float | None
    wall_overhead: float | None
    curve: tuple[CurvePoint, ...]


@dataclass(frozen=True)
class Baseline:
    """A pre-training baseline as one board shows it: scored on the board's problems it has."""

    record: BaselineRecord
    accuracy: float
    n: int  # board eval problems the baseline file covers
    n_board: int  # problems in the board's eval set


@dataclass(frozen=True)
class Board:
    """One leaderboard: the runs of one group, their rows, and what was left out."""

    group: Mapping[str, Any]  # the config values every run of the board shares
    group_by: tuple[str, ...] | None  # the fields that define a board; None: all but NOT_GROUPED
    slug: str
    rows: tuple[Row, ...]
    runs: tuple[RunRecord, ...]
    left_out: tuple[LeftOut, ...]
    source: str  # "final" (final.json) or "in-loop" (last in-loop eval)
    baseline: str | None  # label of the uniform row, None if the group has none
    target: float | None  # uniform's final seed-mean in-loop accuracy
    flops_limit: float | None  # uniform's seed-mean cumulative FLOPs at its last eval
    min_seeds: int
    n_boot: int
    boot_seed: int
    start: MeanCI | None = None  # step-0 in-loop accuracy over the runs, if all have it
    baselines: tuple[Baseline, ...] = ()

    @property
    def eval_ids(self) -> tuple[str, ...]:
        """The problem ids of the accuracy column (the same for every run of the board)."""
        return _vector(self.runs[0], self.source)[0]

    @property
    def title(self) -> str:
        return " · ".join(str(self.group.get(k, "?")) for k in ("task", "model", "budget"))


def build_leaderboards(
    runs_dir: Path, *, task: str | None = None, min_seeds: int = 2, n_boot: int = 10_000,
    boot_seed: int = 0, group_by: Sequence[str] | None = None,
) -> list[Board]:
    """Every board that the records under ``runs_dir`` support (see :func:`build_all`)."""
    return build_all(runs_dir, task=task, min_seeds=min_seeds, n_boot=n_boot,
                     boot_seed=boot_seed, group_by=group_by)[0]


def build_all(
    runs_dir: Path, *, task: str | None = None, min_seeds: int = 2, n_boot: int = 10_000,
    boot_seed: int = 0, group_by: Sequence[str] | None = None,
) -> tuple[list[Board], list[LeftOut]]:
    """Boards (sorted by slug) and every run left out, with its reason.

    ``group_by``: config fields that define a board (default: all but method, seed and
    method_params). With a coarser choice (e.g. task, model), runs whose other settings differ
    from their group's majority (say a budget of steps=30 among steps=50) are left out.
    A left-out run is listed on its own group's board; one whose group has no board (or whose
    config could not be read) is listed on every board.
    """
    runs, left_out = scan_runs(runs_dir)
    if task is not None:
        runs = [r for r in runs if r.config.get("task") == task]
        left_out = [x for x in left_out if x.config is None or x.config.get("task") == task]
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(_group_id(run.config, group_by), []).append(run)
    cleaned: dict[str, list[RunRecord]] = {}
    for gid, members in sorted(groups.items()):
        cleaned[gid], dropped = _clean_group(members, group_by)
        left_out.extend(dropped)
    left_out.sort(key=lambda x: x.run_id)

    def home(x: LeftOut) -> str | None:
        gid = None if x.config is None else _group_id(x.config, group_by)
        return gid if gid in cleaned else None

    orphans = [x for x in left_out if home(x) is None]
    built = [
        _board(kept, tuple(sorted([x for x in left_out if home(x) == gid] + orphans,
                                  key=lambda x: x.run_id)),
               min_seeds, n_boot, boot_seed, group_by)
        for gid, kept in cleaned.items()
    ]
    return _unique_slugs(built), left_out


# ----------------------------------------------------------------------------- grouping


def _group_values(config: Mapping[str, Any], group_by: Sequence[str] | None) -> dict[str, Any]:
    if group_by is None:
        return {k: v for k, v in config.items() if k not in NOT_GROUPED}
    return {k: config.get(k) for k in group_by}


def _group_id(config: Mapping[str, Any], group_by: Sequence[str] | None) -> str:
    return json.dumps(_group_values(config, group_by), sort_keys=True, default=str)


def _rest(config: Mapping[str, Any], group_by: Sequence[str] | None) -> dict[str, Any]:
    """Settings outside the group key that must still agree within a board."""
    keys = set(group_by or ()) | set(NOT_GROUPED)
    return flatten({k: v for k, v in config.items() if k not in keys})


def _clean_group(
    runs: list[RunRecord], group_by: Sequence[str] | None
) -> tuple[list[RunRecord], list[LeftOut]]:
    """Drop duplicates, runs whose settings differ from the group's majority, and runs whose
    eval problems differ from the group's majority; say why."""
    dropped: list[LeftOut] = []
    seen: dict[tuple[str, int], str] = {}
    kept = []
    for run in sorted(runs, key=lambda r: r.run_id):
        key = (run.label, run.seed)
        if key in seen:
            dropped.append(LeftOut(run.run_id, f"duplicate of {seen[key]} (same method and "
                                   f"seed)", run.config))
            continue
        seen[key] = run.run_id
        kept.append(run)
    kept, bad = _majority(kept, lambda r: _rest(r.config, group_by), _describe_config)
    dropped.extend(bad)
    source = _source(kept)
    kept, bad = _majority(kept, lambda r: sorted(_vector(r, source)[0]), _describe_ids)
    dropped.extend(bad)
    return kept, dropped


def _majority(runs: list[RunRecord], key: Any, describe: Any) -> tuple[list[RunRecord],
                                                                         list[LeftOut]]:
    """Keep the runs whose ``key`` is the most common one (ties: the smallest key as JSON)."""
    if not runs:
        return [], []
    keys = {r.run_id: json.dumps(key(r), sort_keys=True, default=str) for r in runs}
    counts = Counter(keys.values())
    best = min(counts, key=lambda k: (-counts[k], k))
    kept = [r for r in runs if keys[r.run_id] == best]
    ref = kept[0]
    dropped = [LeftOut(r.run_id, describe(key(r), key(ref)), r.config)
               for r in runs if keys[r.run_id] != best]
    return kept, dropped


def _describe_config(mine: dict[str, Any], group: dict[str, Any]) -> str:
    diff = sorted(k for k in set(mine) | set(group) if mine.get(k) != group.get(k))
    parts = ", ".join(f"{k}={mine.get(k)} (group: {group.get(k)})" for k in diff)
    return f"mixed settings within the group: {parts}"


def _describe_ids(mine: list[str], group: list[str]) -> str:
    common = len(set(mine) & set(group))
    return (f"eval problems differ from the group's: {len(mine)} ids, {common} of the group's "
            f"{len(group)} in common")


def _source(runs: Sequence[RunRecord]) -> str:
    """'final' when every run has per-problem final results, else 'in-loop'."""
    ok = runs and all(r.final is not None and r.final.correct is not None for r in runs)
    return "final" if ok else "in-loop"


def _vector(run: RunRecord, source: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if source == "final" and run.final is not None and run.final.ids is not None:
        return run.final.ids, run.final.correct or ()
    return run.evals[-1].ids, run.evals[-1].correct


def run_accuracy(run: RunRecord, source: str) -> float:
    """The run's accuracy from ``source``: 'final' (final.json) or 'in-loop' (last eval)."""
    if source == "final" and run.final is not None:
        return run.final.accuracy
    return run.evals[-1].accuracy


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class _Reference:
    label: str
    runs: tuple[RunRecord, ...]
    target: float  # final seed-mean in-loop accuracy
    flops_limit: float  # seed-mean cumulative FLOPs at the last eval


def _reference(by_label: Mapping[str, list[RunRecord]]) -> _Reference | None:
    """The uniform row: the one labelled plain 'uniform', else the first uniform variant."""
    labels = sorted(k for k, v in by_label.items() if v[0].method == BASELINE)
    if not labels:
        return None
    label = BASELINE if BASELINE in labels else labels[0]
    runs = tuple(by_label[label])
    return _Reference(
        label=label, runs=runs,
        target=sum(r.evals[-1].accuracy for r in runs) / len(runs),
        flops_limit=sum(r.evals[-1].cum_flops for r in runs) / len(runs),
    )


def _board(runs: list[RunRecord], left_out: tuple[LeftOut, ...], min_seeds: int,
           n_boot: int, boot_seed: int, group_by: Sequence[str] | None) -> Board:
    by_label: dict[str, list[RunRecord]] = {}
    for run in sorted(runs, key=lambda r: (r.label, r.seed)):
        by_label.setdefault(run.label, []).append(run)
    source = _source(runs)
    ref = _reference(by_label)
    rows = [_row(label, rs, ref, source, min_seeds, n_boot, boot_seed)
            for label, rs in by_label.items()]
    rows.sort(key=lambda r: (-r.accuracy.mean, r.label))
    return Board(
        group=_group_values(runs[0].config, group_by),
        group_by=tuple(group_by) if group_by is not None else None, slug="", rows=tuple(rows),
        runs=tuple(sorted(runs, key=lambda r: r.run_id)), left_out=left_out, source=source,
        baseline=ref.label if ref else None, target=ref.target if ref else None,
        flops_limit=ref.flops_limit if ref else None, min_seeds=min_seeds, n_boot=n_boot,
        boot_seed=boot_seed, start=_start(runs, source),
    )


def _start(runs: Sequence[RunRecord], source: str) -> MeanCI | None:
    """Step-0 in-loop accuracy over the runs, when every run evaluated at step 0 on the
    problems of the accuracy column (so "gain" compares like with like)."""
    firsts = [r.evals[0] for r in runs]
    if any(e.step != 0 or set(e.ids) != set(_vector(r, source)[0])
           for e, r in zip(firsts, runs, strict=True)):
        return None
    return t_interval([e.accuracy for e in firsts])


def attach_baselines(boards: Sequence[Board], baselines: Sequence[BaselineRecord]) -> tuple[
        list[Board], list[tuple[BaselineRecord, str]]]:
    """Show each baseline on every board of its task (same task params) whose eval problems
    it covers at least in part; also return the baselines no board could show, and why."""
    shown: dict[int, list[Baseline]] = {id(b): [] for b in boards}
    unused = []
    for rec in baselines:
        by_id = dict(zip(rec.ids, rec.correct, strict=True))
        reasons, placed = [], False
        for board in boards:
            if board.group.get("task") != rec.task:
                reasons.append(f"task {rec.task} ≠ {board.group.get('task')}")
                continue
            if dict(board.group.get("task_params") or {}) != dict(rec.task_params):
                reasons.append(f"task params {dict(rec.task_params)} ≠ "
                               f"{dict(board.group.get('task_params') or {})}")
                continue
            ids = board.eval_ids
            common = [by_id[i] for i in ids if i in by_id]
            if not common:
                reasons.append(f"none of the {len(ids)} eval problems of board {board.slug}")
                continue
            shown[id(board)].append(Baseline(rec, sum(common) / len(common), len(common),
                                             len(ids)))
            placed = True
        if not placed:
            unused.append((rec, "; ".join(sorted(set(reasons))) or "no board"))
    out = [dataclasses.replace(b, baselines=tuple(shown[id(b)])) for b in boards]
    return out, unused


def _row(label: str, runs: list[RunRecord], ref: _Reference | None, source: str,
         min_seeds: int, n_boot: int, boot_seed: int) -> Row:
    curve = tuple(mean_curve([
        [(e.step, e.accuracy, e.cum_flops, e.cum_seconds) for e in r.evals] for r in runs
    ]))
    paired, note = _compare(runs, ref, source, min_seeds, n_boot, boot_seed)
    base_flops = [x for r in ref.runs for x in r.step_flops] if ref else []
    base_secs = [x for r in ref.runs for x in r.step_seconds] if ref else []
    return Row(
        label=label, method=runs[0].method, seeds=tuple(r.seed for r in runs),
        accuracy=t_interval([run_accuracy(r, source) for r in runs]),
        marked=len(runs) < min_seeds, paired=paired, paired_note=note,
        convergence=convergence_point(curve, ref.target) if ref else None,
        compute_matched=compute_matched_point(curve, ref.flops_limit) if ref else None,
        flops_overhead=overhead_pct([x for r in runs for x in r.step_flops], base_flops),
        wall_overhead=overhead_pct([x for r in runs for x in r.step_seconds], base_secs),
        curve=curve,
    )


def _compare(runs: list[RunRecord], ref: _Reference | None, source: str, min_seeds: int,
             n_boot: int, boot_seed: int) -> tuple[PairedResult | None, str]:
    """Δ vs uniform over the seeds both have; a note instead when there is nothing fair to
    compare (no uniform, too few seeds on either side, no common seed or problem)."""
    if ref is None:
        return None, "no uniform"
    if runs[0].label == ref.label:
        return None, "reference"
    paired = pair_by_problem(
        {r.seed: _vector(r, source) for r in runs},
        {r.seed: _vector(r, source) for r in ref.runs},
    )
    if not paired.seeds or paired.n_pairs == 0:
        return None, "no common seed/problem"
    if min(len(runs), len(ref.runs), len(paired.seeds)) < min_seeds:
        return None, f"n<{min_seeds}"
    if len(paired.seeds) == 1:
        return mcnemar_exact(paired), ""
    return paired_bootstrap(paired, n_boot=n_boot, seed=boot_seed), ""


# ----------------------------------------------------------------------------- slugs


def slugify(text: str) -> str:
    """Lower-case file-name slug: runs of anything but [a-z0-9.] become one '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "board"


def _unique_slugs(boards: list[Board]) -> list[Board]:
    """``<task>-<model>-<budget>``; boards that share it get the settings that tell them apart
    appended (or a short hash of those when that would be too long). Sorted by slug."""
    base = {id(b): slugify(b.title.replace(" · ", "-")) for b in boards}
    out = []
    for board in boards:
        clash = [b for b in boards if base[id(b)] == base[id(board)]]
        slug = base[id(board)]
        if len(clash) > 1:
            flat = [flatten(b.group) for b in clash]
            keys = sorted(k for k in set().union(*flat) if len({str(f.get(k)) for f in flat}) > 1)
            mine = flatten(board.group)
            extra = slugify("-".join(f"{k}-{mine.get(k)}" for k in keys))
            if len(slug) + len(extra) + 1 > MAX_SLUG:
                extra = hashlib.sha256(extra.encode()).hexdigest()[:8]
            slug = f"{slug}-{extra}"
        out.append(dataclasses.replace(board, slug=slug))
    return sorted(out, key=lambda b: b.slug)


def render_markdown(board: Board, plots: bool = True) -> str:
    """The board as a markdown page (see :func:`harness.leaderboard_md.render_markdown`)."""
    from harness.leaderboard_md import render_markdown as _render

    return _render(board, plots=plots)
