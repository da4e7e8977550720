"""Read finished runs for the leaderboard, and say by name why a run is left out.

A run enters a leaderboard only if its record is complete and well formed (format:
:mod:`harness.records`): ``config.json``, ``metrics.jsonl``, ``evals.jsonl`` and ``done.json``
are present and parse, every eval line has ids and a 0/1 vector of the same length, and the run
spent the budget its config names. Anything else becomes a :class:`LeftOut` (run id + reason);
reading never raises for a bad record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import Budget
from harness.errors import HarnessError
from harness.records import read_json, read_jsonl

#: Ledger phase that is in-loop evaluation, not training; left out of the per-step cost.
EVAL_PHASE = "eval"


@dataclass(frozen=True)
class LeftOut:
    """A run that is not on a board, and why."""

    run_id: str
    reason: str
    config: Mapping[str, Any] | None = None  # the run's config when it could be read


@dataclass(frozen=True)
class EvalPoint:
    """One line of ``evals.jsonl``."""

    step: int
    accuracy: float
    cum_flops: float
    cum_seconds: float
    ids: tuple[str, ...]
    correct: tuple[int, ...]


@dataclass(frozen=True)
class FinalEval:
    """``final.json``: the final (lm-eval) scoring. ids/correct are None if not recorded."""

    accuracy: float
    task: str | None
    n: int | None
    ids: tuple[str, ...] | None
    correct: tuple[int, ...] | None


@dataclass(frozen=True)
class BaselineRecord:
    """A model scored before any training: a ``harness eval --model M --task T --out FILE``
    result, shown on the boards of its task as the starting point."""

    path: str
    model: str
    task: str
    task_params: Mapping[str, Any]
    ids: tuple[str, ...]
    correct: tuple[int, ...]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class RunRecord:
    """A finished run, as the leaderboard needs it."""

    run_id: str
    config: Mapping[str, Any]  # RunConfig.to_dict()
    git_commit: str | None
    harness_version: str | None
    evals: tuple[EvalPoint, ...]  # sorted by step
    step_flops: tuple[float, ...]  # per optimizer step, training phases only
    step_seconds: tuple[float, ...]  # per optimizer step, training phases only
    final: FinalEval | None

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def label(self) -> str:
        """The row name: the method, plus its parameters when the run set any."""
        params = flatten(self.config.get("method_params") or {})
        if not params:
            return self.method
        prefix = self.method + "."
        text = ", ".join(
            f"{k[len(prefix):] if k.startswith(prefix) else k}={v}" for k, v in params.items()
        )
        return f"{self.method} ({text})"


class _Bad(Exception):
    """A record problem; its message is the reason shown in the 'Left out' section."""


def scan_runs(runs_dir: Path) -> tuple[list[RunRecord], list[LeftOut]]:
    """Read every run under ``runs_dir`` (sorted by run id): the complete ones, and the others
    with the reason. Raises HarnessError only if ``runs_dir`` is not a directory."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise HarnessError(f"runs directory {root} does not exist or is not a directory")
    runs: list[RunRecord] = []
    left_out: list[LeftOut] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        try:
            runs.append(load_run(child))
        except _Bad as exc:
            left_out.append(LeftOut(child.name, str(exc), _try_config(child)))
    return runs, left_out


def _try_config(run_dir: Path) -> Mapping[str, Any] | None:
    try:
        config = read_json(run_dir / "config.json").get("config")
    except (HarnessError, OSError, UnicodeDecodeError, AttributeError):
        return None
    return config if isinstance(config, Mapping) else None


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory; raises ``_Bad`` (reason) for an incomplete or malformed one."""
    run_dir = Path(run_dir)
    try:
        return _load(run_dir)
    except HarnessError as exc:
        raise _Bad(str(exc).replace(f"{run_dir}/", "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        text = str(exc).replace(f"{run_dir}/", "")
        raise _Bad(f"unreadable file ({type(exc).__name__}: {text})") from None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise _Bad(f"malformed record ({type(exc).__name__}: {exc})") from None


def _load(run_dir: Path) -> RunRecord:
    for name, why in (("config.json", "not a run record or killed at setup"),
                      ("done.json", "still running, or killed"),
                      ("evals.jsonl", "no in-loop evals recorded"),
                      ("metrics.jsonl", "no training steps recorded")):
        if not (run_dir / name).exists():
            raise _Bad(f"no {name} ({why})")
    meta = _mapping(read_json(run_dir / "config.json"), "config.json")
    config = _mapping(meta.get("config"), "config.json: 'config'")
    for key in ("method", "seed", "task", "model", "budget"):
        if key not in config:
            raise _Bad(f"config.json: 'config' has no '{key}'")
    if isinstance(config["seed"], bool) or not isinstance(config["seed"], int):
        raise _Bad(f"config.json: seed {config['seed']!r} is not an integer")
    if not isinstance(config.get("method_params") or {}, Mapping):
        raise _Bad("config.json: 'method_params' is not an object")
    done = _mapping(read_json(run_dir / "done.json"), "done.json")
    evals = tuple(sorted((_eval_point(r, i) for i, r in enumerate(
        read_jsonl(run_dir / "evals.jsonl"), 1)), key=lambda p: p.step))
    if not evals:
        raise _Bad("evals.jsonl is empty")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics:
        raise _Bad("metrics.jsonl is empty")
    flops, seconds = zip(*(_step_cost(r, i) for i, r in enumerate(metrics, 1)), strict=True)
    final = None
    if (run_dir / "final.json").exists():
        final = _final(_mapping(read_json(run_dir / "final.json"), "final.json"))
    run = RunRecord(
        run_id=run_dir.name, config=config, git_commit=_opt_str(meta.get("git_commit")),
        harness_version=_opt_str(meta.get("harness_version")), evals=evals,
        step_flops=tuple(flops), step_seconds=tuple(seconds), final=final,
    )
    _check_budget(run, metrics, done)
    return run


def _check_budget(run: RunRecord, metrics: list[dict[str, Any]], done: Mapping[str, Any]) -> None:
    """The run must have spent the budget its config names (a 'steps=50' run that stopped at
    30 is not comparable with the finished ones)."""
    budget = Budget.parse(str(run.config["budget"]))
    steps = len(metrics)
    if "step" in done and _num(done["step"], "done.json: 'step'") != steps:
        raise _Bad(f"done.json says step {done['step']} but metrics.jsonl has {steps} steps")
    if budget.kind == "steps":
        spent = float(steps)
    else:
        field = {"tokens": "cum_tokens", "flops": "cum_flops", "seconds": "cum_seconds"}
        spent = _num(metrics[-1].get(field[budget.kind]), f"metrics.jsonl: '{field[budget.kind]}'")
    if (budget.kind == "steps" and spent != budget.amount) or spent < budget.amount:
        raise _Bad(f"budget mismatch: config budget is {budget} but the run spent "
                   f"{budget.kind}={spent:g}")


def _eval_point(row: Any, lineno: int) -> EvalPoint:
    where = f"evals.jsonl:{lineno}"
    row = _mapping(row, where)
    ids = _list(row.get("ids"), f"{where}: 'ids'")
    correct = _list(row.get("correct"), f"{where}: 'correct'")
    if len(ids) != len(correct):
        raise _Bad(f"{where}: {len(ids)} ids but {len(correct)} correctness values")
    if len(set(map(str, ids))) != len(ids):
        raise _Bad(f"{where}: duplicate problem ids")
    if any(c not in (0, 1) for c in correct):
        raise _Bad(f"{where}: 'correct' must hold 0/1 values")
    return EvalPoint(
        step=int(_num(row.get("step"), f"{where}: 'step'")),
        accuracy=_num(row.get("accuracy"), f"{where}: 'accuracy'"),
        cum_flops=_num(row.get("cum_flops"), f"{where}: 'cum_flops'"),
        cum_seconds=_num(row.get("cum_seconds"), f"{where}: 'cum_seconds'"),
        ids=tuple(map(str, ids)), correct=tuple(int(c) for c in correct),
    )


def _step_cost(row: Any, lineno: int) -> tuple[float, float]:
    """Training FLOPs and seconds of one step: the step totals minus the eval phase, if the
    per-phase dicts book one (in-loop eval costs the same for every method)."""
    where = f"metrics.jsonl:{lineno}"
    row = _mapping(row, where)
    out = []
    for total, phases in (("flops_step", "flops"), ("seconds_step", "seconds")):
        value = _num(row.get(total), f"{where}: '{total}'")
        per_phase = row.get(phases)
        if isinstance(per_phase, Mapping) and EVAL_PHASE in per_phase:
            value -= _num(per_phase[EVAL_PHASE], f"{where}: '{phases}.{EVAL_PHASE}'")
        out.append(value)
    return out[0], out[1]


def _final(obj: Mapping[str, Any]) -> FinalEval:
    acc = _num(obj.get("accuracy"), "final.json: 'accuracy'")
    ids = obj.get("ids")
    correct = obj.get("correct")
    if ids is not None or correct is not None:
        ids = _list(ids, "final.json: 'ids'")
        correct = _list(correct, "final.json: 'correct'")
        if len(ids) != len(correct) or any(c not in (0, 1) for c in correct):
            raise _Bad("final.json: 'ids' and 'correct' must have equal length, 0/1 values")
        ids, correct = tuple(map(str, ids)), tuple(int(c) for c in correct)
    n = obj.get("n")
    return FinalEval(
        accuracy=acc, task=_opt_str(obj.get("task")),
        n=int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None,
        ids=ids, correct=correct,
    )


def load_baseline(path: Path) -> BaselineRecord:
    """Read a baseline file (final.json format with per-problem results); one HarnessError
    naming the file and the field when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"--baseline {path}: no such file")
    try:
        obj = _mapping(read_json(path), path.name)
        final = _final(obj)
        if final.task is None or final.ids is None or final.correct is None:
            raise _Bad("needs 'task', 'ids' and 'correct' (write it with harness eval --model "
                       "M --task T --out FILE)")
        settings = obj.get("settings") or {}
        params = _mapping(settings, "'settings'").get("task_params") or {}
        return BaselineRecord(
            path=str(path), model=str(obj.get("model") or "?"), task=final.task,
            task_params=_mapping(params, "'settings.task_params'"), ids=final.ids,
            correct=final.correct, settings=settings,
        )
    except (_Bad, ValueError) as err:
        raise HarnessError(f"--baseline {path}: {err}") from None


def _mapping(obj: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _Bad(f"{where} is not a JSON object")
    return obj


def _list(obj: Any, where: str) -> list[Any]:
    if not isinstance(obj, list):
        raise _Bad(f"{where} missing or not a list")
    return obj


def _num(obj: Any, where: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        raise _Bad(f"{where} missing or not a finite number")
    return float(obj)


def _opt_str(obj: Any) -> str | None:
    return None if obj is None else str(obj)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, keys sorted."""
    out: dict[str, Any] = {}
    for key in sorted(obj):
        value = obj[key]
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
