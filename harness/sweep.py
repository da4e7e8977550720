"""Sweeps over methods × tasks × seeds. Run ids are config hashes, so a sweep is idempotent:
finished runs are skipped, killed runs resume, and a sweep can be stopped and restarted at any
time. Backends share one interface: ``map(job, configs) -> iterator of outcomes``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.registry import Registry


@dataclass(frozen=True)
class Outcome:
    run_id: str
    method: str
    task: str
    seed: int
    status: str  # "done" | "skipped" (already finished) | "failed" | "busy"
    accuracy: float | None
    seconds: float
    error: str = ""


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,7"`` → [0, 2, 7]."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise HarnessError(f"--seeds {text!r}: expected e.g. 0-4 or 0,1,2") from None
    if not seeds:
        raise HarnessError(f"--seeds {text!r}: no seeds")
    return sorted(set(seeds))


def grid(
    base: RunConfig, methods: list[str], tasks: list[str], seeds: list[int]
) -> list[RunConfig]:
    """Seed-major order: a sweep cut short still has complete seeds to compare."""
    return [dataclasses.replace(base, method=m, task=t, seed=s,
                                method_params={m: base.method_params[m]}
                                if m in base.method_params else {})
            for t in tasks for s in seeds for m in methods]


def run_one(cfg: RunConfig, out: str, final_eval: bool, threads: int) -> Outcome:
    """One sweep job; runs in a worker process (or a Ray task)."""
    import torch

    from harness.run_meta import run_id
    from harness.trainer import RunBusy, train

    torch.set_num_threads(max(1, threads))
    rid = run_id(cfg)
    start = time.perf_counter()
    hook = None
    if final_eval:
        from harness.evaluate import final_eval_hook as hook
    try:
        res = train(cfg, Path(out), final_eval=hook)
    except RunBusy as exc:
        return Outcome(rid, cfg.method, cfg.task, cfg.seed, "busy", None, 0.0, str(exc))
    except Exception as exc:  # a failed run must not take the sweep down
        err = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, HarnessError):
            err += "\n" + traceback.format_exc(limit=3)
        return Outcome(rid, cfg.method, cfg.task, cfg.seed, "failed", None,
                       time.perf_counter() - start, err)
    status = "skipped" if res.skipped else "done"
    return Outcome(rid, cfg.method, cfg.task, cfg.seed, status, res.final_accuracy,
                   time.perf_counter() - start)


# ----------------------------------------------------------------------------- plugins

_BUILTIN_PREFIXES = ("harness.", "tasks.", "weighting.")


@dataclass(frozen=True)
class Plugin:
    """A module a worker must import so the registry entries a run names exist there."""

    module: str
    root: str | None  # the sys.path entry it was imported from on the driver (None: unknown)


def plugin_modules(configs: Iterable[RunConfig]) -> list[Plugin]:
    """The non-built-in modules that define the task, method, engine and model preset of each
    config (a ``--plugin`` module, an entry point), with the path root each was imported from.

    >>> plugin_modules([])
    []
    """
    from harness.registries import ENGINES, METHODS, MODELS, TASKS

    names: dict[str, None] = {}
    for cfg in configs:
        for registry, name in ((TASKS, cfg.task), (METHODS, cfg.method),
                               (ENGINES, cfg.engine), (MODELS, cfg.model)):
            if name in registry:
                module = getattr(registry.get(name), "__module__", None)
                if module and module != "__main__" and not module.startswith(_BUILTIN_PREFIXES):
                    names[module] = None
    return [Plugin(m, _import_root(m)) for m in names]


def _import_root(module: str) -> str | None:
    """``/repo`` for module ``tests.toy_task`` loaded from ``/repo/tests/toy_task.py``."""
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module.count(".") + (2 if path.name == "__init__.py" else 1)
    return str(path.parents[depth - 1])


def import_plugins(plugins: Iterable[Plugin]) -> None:
    """Worker side: put each plugin's root on ``sys.path`` and import it (registers its entries)."""
    for plugin in plugins:
        if plugin.root and plugin.root not in sys.path and os.path.isdir(plugin.root):
            sys.path.append(plugin.root)
        try:
            importlib.import_module(plugin.module)
        except ImportError as exc:
            raise HarnessError(
                f"plugin module '{plugin.module}' cannot be imported on this worker ({exc}); "
                "install it on every node or put it on a shared filesystem") from None


def run_in_worker(cfg: RunConfig, out: str, final_eval: bool, threads: int,
                  plugins: tuple[Plugin, ...] = ()) -> Outcome:
    """One sweep job in a fresh worker: import the plugins the config needs, then
    :func:`run_one`. Plugin import errors become a ``failed`` outcome, like any run error."""
    from harness.progress import quiet_transformers

    quiet_transformers()  # a fresh worker has not run the CLI's set-up
    try:
        import_plugins(plugins)
    except HarnessError as exc:
        return _failed(cfg, str(exc))
    return run_one(cfg, out, final_eval, threads)


def _failed(cfg: RunConfig, error: str, seconds: float = 0.0) -> Outcome:
    from harness.run_meta import run_id

    return Outcome(run_id(cfg), cfg.method, cfg.task, cfg.seed, "failed", None, seconds, error)



Backend = Callable[[list[RunConfig], str, bool, int], Iterator[Outcome]]
# The loader registers the optional backends ("ray") on first lookup; their modules import
# their heavy dependencies lazily.
BACKENDS: Registry[Backend] = Registry(
    "sweep backend", lambda: importlib.import_module("harness.ray_backend"))


@BACKENDS.register("local", "a process pool on this machine (--jobs N)")
def local_backend(configs: list[RunConfig], out: str, final_eval: bool,
                  jobs: int) -> Iterator[Outcome]:
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    if jobs <= 1:
        for cfg in configs:
            yield run_one(cfg, out, final_eval, threads)
        return
    ctx = mp.get_context("spawn")  # torch + fork is unsafe; spawn gives clean workers
    plugins = tuple(plugin_modules(configs))  # spawned workers must import --plugin modules
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_in_worker, cfg, out, final_eval, threads, plugins)
                   for cfg in configs]
        for fut in cf.as_completed(futures):
            yield fut.result()


def summary_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for o in sorted(outcomes, key=lambda o: (o.task, o.method, o.seed)):
        rows.append({"run": o.run_id, "task": o.task, "method": o.method, "seed": o.seed,
                     "status": o.status,
                     "accuracy": "—" if o.accuracy is None else f"{100 * o.accuracy:.1f}%",
                     "seconds": f"{o.seconds:.0f}", "error": o.error.splitlines()[0]
                     if o.error else ""})
    return rows
