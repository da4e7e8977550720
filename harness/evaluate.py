"""Final evaluation through lm-eval (DESIGN §1, §5): ``final.json`` for a run or a baseline.

The model is evaluated in memory: ``lm_eval.models.huggingface.HFLM`` wraps the loaded model
object and its tokenizer (so in-process presets like ``tiny-random`` and a trainer's live policy
work), the task config comes from the adapter (:mod:`harness.lmeval_tasks`), and
``lm_eval.simple_evaluate`` runs greedy ``generate_until`` with metric ``acc`` (mean).

Eval set. ``final_eval_hook`` (the trainer's end-of-run hook) scores the *same* fixed subset as
in-loop eval — the first ``eval_n`` test problems (``RunState.eval_set``) — so the final number
and the in-loop curve are comparable and paired statistics line up problem by problem.
``harness eval --run`` uses that subset too unless ``--limit`` says otherwise (0 = whole split).

Records. ``final.json`` = ``{"task", "accuracy", "n", "ids", "correct", "lm_eval": {...}}``
(records.py) plus ``model``, ``settings`` and ``samples_file``; ``lm_eval`` is lm-eval's own
results dict without its per-sample logs, which go line by line to ``final_samples.jsonl``
beside it (``<stem>_samples.jsonl`` for other names). ``correct`` is in eval-set order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import records
from harness.config import EVAL_BACKENDS
from harness.errors import HarnessError
from harness.lmeval_tasks import build_task_config, uses_chat
from harness.types import Problem, Task

DEFAULT_BATCH_SIZE = 8
_QUIET_LOGGERS = ("lm_eval", "datasets", "transformers.generation")


@dataclass
class EvalResult:
    """One lm-eval evaluation of one model on one task's eval set."""

    task: str
    model: str
    ids: list[str]
    correct: list[int]  # 0/1 per problem, in eval-set order
    completions: list[str]  # lm-eval's stop-truncated greedy completions, same order
    lm_eval: dict[str, Any]  # lm-eval's results dict, samples removed, JSON-safe
    samples: list[dict[str, Any]]  # lm-eval's per-sample logs, JSON-safe
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(self.n, 1)

    def record(self, samples_file: str | None = None) -> dict[str, Any]:
        """The ``final.json`` object (records.py format + provenance)."""
        return {
            "task": self.task, "accuracy": self.accuracy, "n": self.n, "ids": self.ids,
            "correct": self.correct, "model": self.model, "settings": self.settings,
            "samples_file": samples_file, "lm_eval": self.lm_eval,
        }


# ----------------------------------------------------------------------------- lm-eval glue


@contextlib.contextmanager
def quiet_lm_eval(verbose: bool = False) -> Iterator[None]:
    """Hide lm-eval's/datasets' INFO+WARNING chatter (e.g. the "pretrained is not a str"
    warning that passing a model object always triggers) and datasets' progress bars unless
    ``verbose``; lm-eval's own "Running generate_until requests" bar stays."""
    if verbose:
        yield
        return
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def build_lm(model: Any, tokenizer: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """lm-eval's ``hf`` backend around an already loaded model object.

    ``add_bos_token`` follows the tokenizer's own default (lm-eval then calls the tokenizer
    exactly as the rollout engine does, and skips it when the prompt already starts with BOS,
    as a chat template may); greedy ``generate`` uses the model's own device.
    """
    from lm_eval.models.huggingface import HFLM

    model.eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size))


def build_vllm_lm(loaded: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """lm-eval's ``vllm`` backend on the directory ``loaded`` was read from (vLLM loads the
    weights itself, so an in-memory model cannot be used). Its tokenizer is the same
    directory's and ``add_bos_token`` follows the tokenizer's default, as with ``hf``; the
    share of GPU memory is ``$HARNESS_VLLM_GPU_MEMORY_UTILIZATION`` (default 0.8 here: nothing
    else is on the GPU during a stand-alone evaluation)."""
    from harness.vllm_engine import require_vllm

    if loaded.path is None:
        raise HarnessError(f"--backend vllm needs a model directory, but '{loaded.spec}' is "
                           "built in memory; use --backend hf")
    require_vllm()
    from lm_eval.api.registry import get_model

    share = float(os.environ.get("HARNESS_VLLM_GPU_MEMORY_UTILIZATION", "0.8"))
    return get_model("vllm")(pretrained=str(loaded.path), tokenizer=str(loaded.path),
                             batch_size=int(batch_size), gpu_memory_utilization=share, seed=0)


def _json_safe(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def run_lm_eval(
    lm: Any, config: dict[str, Any], *, apply_chat_template: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on one in-memory task config with per-sample logs.

    Offline: the TaskManager indexes no built-in tasks (``include_defaults=False``) and the
    data is a local JSON Lines file. ``confirm_run_unsafe_code`` is set because tasks marked
    ``unsafe_code`` execute completions only inside our sandbox (harness.sandbox).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval(verbose):
        results = simple_evaluate(
            model=lm, tasks=[config], task_manager=TaskManager(include_defaults=False),
            log_samples=True, bootstrap_iters=1000, apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template, confirm_run_unsafe_code=True,
            # Greedy decoding needs no seeds; leave the caller's global RNGs (a trainer's) alone.
            random_seed=None, numpy_random_seed=None, torch_random_seed=None,
        )
    if results is None:  # only non-zero ranks of a distributed launch get None
        raise HarnessError("lm-eval returned no results (not rank 0?)")
    return results


def _collect(results: dict[str, Any], name: str, problems: list[Problem]) -> tuple[
        list[int], list[str], list[dict[str, Any]]]:
    """Per-problem correctness and completions in eval-set order, from lm-eval's samples."""
    samples = sorted(results.get("samples", {}).get(name, []), key=lambda s: s["doc_id"])
    by_id = {s["doc"]["id"]: s for s in samples}
    missing = [p.id for p in problems if p.id not in by_id]
    if missing:
        raise HarnessError(f"lm-eval returned no sample for problem(s) {missing[:5]}")
    correct = [int(by_id[p.id]["acc"]) for p in problems]
    completions = [str(by_id[p.id]["filtered_resps"][0]) for p in problems]
    return correct, completions, samples


# ----------------------------------------------------------------------------- entry points


def evaluate_problems(
    loaded: Any, task: Task, problems: list[Problem], *, chat: bool | None = None,
    max_new_tokens: int | None = None, num_fewshot: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
    model_name: str = "", verbose: bool = False, backend: str = "hf",
) -> EvalResult:
    """Evaluate ``loaded`` (a LoadedModel: ``.model``, ``.tokenizer``) on exactly ``problems``
    through lm-eval with the adapter's prompts, stops, length and scorer; ``backend`` 'hf'
    (the model object in memory) or 'vllm' (its directory, on a GPU)."""
    if backend not in EVAL_BACKENDS:
        raise HarnessError(f"backend '{backend}': choose from {', '.join(EVAL_BACKENDS)}")
    if not problems:
        raise HarnessError(f"task '{task.name}': nothing to evaluate (empty eval set)")
    tok = loaded.tokenizer
    fewshot = _train_split(task) if num_fewshot > 0 else None
    max_new = int(max_new_tokens or task.max_new_tokens)
    config = build_task_config(task, problems, tokenizer=tok, chat=chat, max_new_tokens=max_new,
                               num_fewshot=num_fewshot, fewshot_problems=fewshot)
    chat_on = uses_chat(tok, chat)
    start = time.perf_counter()
    with quiet_lm_eval(verbose):
        lm = (build_lm(loaded.model, tok, batch_size) if backend == "hf"
              else build_vllm_lm(loaded, batch_size))
    if max_new >= lm.max_length:  # lm-eval would fail an assert (no room for the prompt)
        raise HarnessError(f"max_new_tokens={max_new} does not fit the model's context of "
                           f"{lm.max_length} tokens; pass a smaller --max-new-tokens")
    results = run_lm_eval(lm, config, apply_chat_template=chat_on and num_fewshot > 0,
                          verbose=verbose)
    seconds = time.perf_counter() - start
    name = config["task"]
    correct, completions, samples = _collect(results, name, problems)
    results = dict(results)
    results.pop("samples", None)
    settings = {
        "chat": chat_on, "prompt_format": config["metadata"]["prompt_format"],
        "max_new_tokens": max_new, "num_fewshot": num_fewshot, "batch_size": batch_size,
        "backend": backend,
        "until": list(task.stop), "seconds": round(seconds, 3), "lm_eval_task": name,
        "data_files": config["dataset_kwargs"]["data_files"],
    }
    return EvalResult(task=task.name, model=model_name, ids=[p.id for p in problems],
                      correct=correct, completions=completions, lm_eval=_json_safe(results),
                      samples=_json_safe(samples), settings=settings)


def evaluate_model(
    loaded: Any, task: Task, *, limit: int | None = None, split: str = "test",
    **kwargs: Any,
) -> EvalResult:
    """Evaluate on the first ``limit`` problems of ``split`` (all when ``limit`` is falsy)."""
    problems = task.load(split)
    if limit:
        if limit < 0:
            raise HarnessError(f"--limit {limit}: must be ≥ 0 (0 = the whole split)")
        problems = problems[:limit]
    result = evaluate_problems(loaded, task, problems, **kwargs)
    result.settings.update(split=split, limit=limit or None)
    return result


def _train_split(task: Task) -> list[Problem] | None:
    try:
        return task.load("train")
    except HarnessError:
        return None


def samples_path(path: Path) -> Path:
    """``final.json`` → ``final_samples.jsonl``; ``x/y.json`` → ``x/y_samples.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_samples.jsonl")


def write_result(result: EvalResult, path: Path) -> Path:
    """Write ``path`` (final.json format) and its samples file, both atomically."""
    path = Path(path)
    spath = samples_path(path)
    lines = "".join(json.dumps(s, sort_keys=True, ensure_ascii=False) + "\n"
                    for s in result.samples)
    records.atomic_write_text(spath, lines)
    records.write_json(path, result.record(samples_file=spath.name))
    return path


def table(result: EvalResult) -> str:
    """lm-eval's familiar markdown results table."""
    from lm_eval.utils import make_table

    return make_table(result.lm_eval)


def final_eval_hook(st: Any) -> float:
    """The trainer's end-of-run hook: lm-eval on the live policy over the in-loop eval subset
    (``st.eval_set``, the first ``eval_n`` test problems), with the run's chat setting and
    generation length; writes ``<run_dir>/final.json`` and returns the accuracy."""
    was_training = st.policy.model.training
    try:
        result = evaluate_problems(
            st.policy, st.task, list(st.eval_set), chat=st.cfg.chat,
            max_new_tokens=st.max_new_tokens, model_name=f"{st.cfg.model}@step{st.step}",
        )
    finally:
        st.policy.model.train(was_training)
    result.settings.update(split="test", limit=len(st.eval_set), step=st.step,
                           task_params=dict(st.cfg.task_params))
    write_result(result, Path(st.run_dir) / "final.json")
    return result.accuracy


# ----------------------------------------------------------------------------- runs


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The resolved config of a run directory (its ``config.json``'s ``config``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise HarnessError(f"--run {run_dir}: not a run directory (no config.json)")
    meta = records.read_json(path)
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise HarnessError(f"{path}: no 'config' with a 'task' in it")
    return cfg


def evaluate_run(
    run_dir: Path, *, limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    verbose: bool = False, backend: str = "hf",
) -> EvalResult:
    """Evaluate a run's final checkpoint (``runs/<id>/checkpoint``) with its task, task params,
    chat setting and generation length; ``limit`` None = the run's ``eval_n`` subset."""
    from harness.checkpoint import latest_checkpoint
    from harness.models import load_model
    from harness.registries import get_task

    run_dir = Path(run_dir)
    cfg = run_settings(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise HarnessError(f"--run {run_dir}: no checkpoint/ to evaluate (has the run started?)")
    task = get_task(cfg["task"], **(cfg.get("task_params") or {}))
    loaded = load_model(str(ckpt))
    n = int(cfg.get("eval_n") or 0) if limit is None else limit
    result = evaluate_model(
        loaded, task, limit=n, chat=cfg.get("chat"), batch_size=batch_size,
        max_new_tokens=int(cfg.get("max_new_tokens") or 0) or None, verbose=verbose,
        model_name=f"{cfg.get('model', '?')}@{run_dir.name}", backend=backend,
    )
    result.settings.update(checkpoint=str(ckpt), task_params=cfg.get("task_params") or {})
    return result


# ----------------------------------------------------------------------------- consistency


def engine_correctness(
    loaded: Any, task: Task, problems: list[Problem], *, chat: bool | None = None,
    max_new_tokens: int | None = None, engine: str = "hf",
) -> tuple[list[int], list[str]]:
    """In-loop evaluation exactly as the trainer does it (greedy rollout engine +
    ``task.score_many``): per-problem 0/1 and the completions. The counterpart of
    :func:`evaluate_problems` for the consistency check."""
    from harness.registries import ENGINES

    eng = ENGINES.get(engine)(loaded)
    prompts = [task.format_prompt(p, loaded.tokenizer, chat) for p in problems]
    gen = eng.generate(
        prompts, 1, max_new_tokens=int(max_new_tokens or task.max_new_tokens),
        temperature=1.0, top_p=1.0, stop=task.stop, greedy=True, generator=None,
    )
    scores = task.score_many(problems, list(gen.texts))
    return [int(s >= 1.0) for s in scores], list(gen.texts)
