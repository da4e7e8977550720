"""``harness run``: train one method on one task under a budget, then score it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.config import RunConfig, build_config, parse_sets
from harness.errors import HarnessError
from harness.registries import ENGINES, METHODS, TASKS, load_plugin


def add_run_options(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Options shared by ``run`` and ``sweep``."""
    p.add_argument("--model", help="preset (harness list models), local dir, .gguf or HF id")
    p.add_argument("--budget", help="steps=N | tokens=N | flops=X | seconds=S")
    p.add_argument("--preset", help="loss preset: grpo, dapo (default), dr_grpo")
    p.add_argument("--engine", help="rollout engine (harness list engines)")
    p.add_argument("--config", type=Path, help="YAML file of settings (CLI flags override it)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set lr=1e-5 --set counterfactual.w_max=3")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE so its @register_method decorators register")
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs directory")
    p.add_argument("--no-final-eval", action="store_true", help="skip the lm-eval final scoring")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="train one method on one task under a fixed budget",
        description="Train a causal LM with GRPO/DAPO under a budget with one token-weighting "
        "method, evaluate it, and write a run record under --out.",
    )
    p.add_argument("--method", help="weighting method (harness list methods)")
    p.add_argument("--task", help="task adapter (harness list tasks)")
    p.add_argument("--seed", type=int)
    add_run_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log", choices=["tensorboard", "wandb"], action="append", default=[],
                   help="also log metrics to TensorBoard / W&B (when installed)")
    p.set_defaults(func=run)


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise HarnessError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise HarnessError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping of settings at the top level")
    return data


def config_from_args(args: argparse.Namespace, single: bool = True, **fixed: Any) -> RunConfig:
    """defaults < --config YAML < flags < --set; names are checked against the registries."""
    for module in args.plugin:
        load_plugin(module)
    overrides: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for key in ("method", "task", "seed", "model", "budget", "preset", "engine"):
        value = fixed.get(key, getattr(args, key, None))
        if value is not None:
            overrides[key] = value
    overrides.update(parse_sets(args.sets))
    cfg = build_config(overrides)
    check_names(cfg)
    cfg = resolve_method_params(cfg, single)
    if single:
        from harness.methods_runtime import MethodRuntime

        MethodRuntime.build(cfg)  # validates the method's parameters before anything runs
    return cfg


def check_names(cfg: RunConfig) -> None:
    TASKS.entry(cfg.task)
    METHODS.entry(cfg.method)
    ENGINES.entry(cfg.engine)


def resolve_method_params(cfg: RunConfig, single: bool = True) -> RunConfig:
    """Keep only the active method's params (so other methods' settings don't change the run
    id); settings for unknown methods are an error."""
    import dataclasses

    for name in cfg.method_params:
        if name not in METHODS:
            METHODS.entry(name)  # raises with the known names and a "did you mean"
    if not single:
        return cfg
    own = dict(cfg.method_params.get(cfg.method, {}))
    return dataclasses.replace(cfg, method_params={cfg.method: own} if own else {})


def run(args: argparse.Namespace) -> int:
    from harness.progress import console_progress
    from harness.trainer import train

    cfg = config_from_args(args)
    final = None
    if not args.no_final_eval:
        try:
            from harness.evaluate import final_eval_hook
        except ImportError:
            final_eval_hook = None
        final = final_eval_hook
    with console_progress(cfg, enabled=not args.no_progress, loggers=args.log) as progress:
        result = train(cfg, args.out, progress=progress, final_eval=final)
    acc = "n/a" if result.final_accuracy is None else f"{100 * result.final_accuracy:.1f}%"
    state = "already finished" if result.skipped else f"{result.steps} steps"
    if result.resumed_from:
        state += f" (resumed from step {result.resumed_from})"
    print(f"run {result.run_id}: {state}, accuracy {acc} -> {result.run_dir}")
    return 0
