"""Progress display (rich) and optional metric loggers (TensorBoard, W&B) for ``harness run``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from harness.config import RunConfig
from harness.errors import HarnessError


def quiet_transformers() -> None:
    """transformers prints a progress bar for every weight load and checkpoint write; ours
    (rich) is the one that matters. Called by the CLI and in every sweep worker."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _tensorboard(run_dir: Any) -> Callable[[int, dict[str, Any]], None]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise HarnessError("--log tensorboard: install it with pip install tensorboard") from None
    writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(step: int, line: dict[str, Any]) -> None:
        for key, value in line.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)
        writer.flush()

    return log


def _wandb(cfg: RunConfig) -> Callable[[int, dict[str, Any]], None]:
    try:
        import wandb
    except ImportError:
        raise HarnessError("--log wandb: install it with pip install wandb") from None
    run = wandb.init(project="rlvr-harness", config=cfg.to_dict(), reinit=True)

    def log(step: int, line: dict[str, Any]) -> None:
        run.log({k: v for k, v in line.items() if isinstance(v, (int, float))}, step=step)

    return log


@contextlib.contextmanager
def console_progress(
    cfg: RunConfig, enabled: bool = True, loggers: list[str] | None = None
) -> Iterator[Callable[[Any, dict[str, Any]], None]]:
    """Yield a callback ``progress(state, metrics_line)`` showing a rich progress bar with the
    step's reward and the latest in-loop accuracy."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = cfg.budget.amount
    columns = [TextColumn(f"{cfg.method}/{cfg.task} s{cfg.seed}"), BarColumn(),
               TextColumn("{task.completed:.3g}/{task.total:.3g} " + cfg.budget.kind),
               TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]}"),
               TimeElapsedColumn()]
    bar = Progress(*columns, disable=not enabled or not sys.stderr.isatty(), transient=False)
    task_id = bar.add_task("train", total=total, reward=0.0, acc="—")
    sinks: list[Callable[[int, dict[str, Any]], None]] = []

    def progress(st: Any, line: dict[str, Any]) -> None:
        if not sinks and loggers:
            sinks.extend(_tensorboard(st.run_dir) if name == "tensorboard" else _wandb(cfg)
                         for name in loggers)
        done = {"steps": st.step, "tokens": line.get("cum_tokens", 0),
                "flops": line.get("cum_flops", 0), "seconds": line.get("cum_seconds", 0)}
        acc = st.last_eval.get("accuracy")
        bar.update(task_id, completed=done[cfg.budget.kind], reward=line["reward_mean"],
                   acc="—" if acc is None else f"{100 * acc:.1f}%")
        for sink in sinks:
            sink(st.step, line)
        if bar.disable and enabled:
            print(f"step {st.step}: reward {line['reward_mean']:.3f} "
                  f"acc {'—' if acc is None else f'{100 * acc:.1f}%'}", file=sys.stderr)

    with bar:
        yield progress
