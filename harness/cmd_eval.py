"""``harness eval``: score a run's final checkpoint, or any model (a baseline), through lm-eval.

    harness eval --run runs/<id>                       # -> runs/<id>/final.json
    harness eval --model smollm2-135m --task gsm8k --limit 100 --out baselines/smollm2-gsm8k.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.config import EVAL_BACKENDS
from harness.errors import HarnessError

CHAT_CHOICES = {"auto": None, "on": True, "off": False}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run's checkpoint or a model through lm-eval",
        description="Greedy evaluation through lm-eval with the task adapter's own prompts, stop "
        "strings, length and scorer. Writes final.json (accuracy, per-problem 0/1 vector, "
        "lm-eval's results) and <stem>_samples.jsonl (lm-eval's per-sample logs).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, metavar="RUN_DIR",
                      help="a run directory: evaluate its checkpoint, write RUN_DIR/final.json")
    what.add_argument("--model", help="preset (harness list models), local dir, .gguf or HF id "
                      "(with --task; a baseline before any training)")
    p.add_argument("--task", help="task adapter (harness list tasks); required with --model")
    p.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE",
                   help="task adapter parameter (as task.KEY in a run config)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="first N test problems (default: the run's eval_n subset with --run, "
                   "the whole split with --model; 0 = whole split)")
    p.add_argument("--num-fewshot", type=int, default=0, metavar="K",
                   help="K solved train problems before each prompt (lm-eval few-shot; default 0)")
    p.add_argument("--chat", choices=sorted(CHAT_CHOICES), default="auto",
                   help="chat template: auto = when the tokenizer has one (default)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="generation length (default: the task's)")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    p.add_argument("--backend", choices=EVAL_BACKENDS, default="hf",
                   help="lm-eval model backend: hf (default) or vllm (a CUDA GPU and vLLM; "
                        "the model or checkpoint directory)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where to write the final.json-format result (--run default: "
                   "RUN_DIR/final.json; --model default: print only)")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's log messages")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.model and not args.task:
        raise HarnessError("--model needs --task (harness list tasks)")
    if args.run and (args.task or args.task_param):
        raise HarnessError("--run takes the task from the run's config.json; drop --task")
    if args.run and (args.chat != "auto" or args.max_new_tokens or args.num_fewshot):
        raise HarnessError("--run evaluates with the run's own settings; --chat, "
                           "--max-new-tokens and --num-fewshot go with --model")
    for name in ("limit", "num_fewshot", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise HarnessError(f"--{name.replace('_', '-')} {value}: must be ≥ 0")
    if args.batch_size < 1:
        raise HarnessError(f"--batch-size {args.batch_size}: must be ≥ 1")


def run(args: argparse.Namespace) -> int:
    from harness import evaluate

    _check(args)
    if args.run:
        result = evaluate.evaluate_run(args.run, limit=args.limit, batch_size=args.batch_size,
                                       verbose=args.verbose, backend=args.backend)
        out = args.out or args.run / "final.json"
    else:
        from harness.config import parse_sets
        from harness.models import load_model
        from harness.registries import get_task

        params = parse_sets(args.task_param, flag="--task-param")
        task = get_task(args.task, **params)
        loaded = load_model(args.model)
        result = evaluate.evaluate_model(
            loaded, task, limit=args.limit, chat=CHAT_CHOICES[args.chat],
            max_new_tokens=args.max_new_tokens, num_fewshot=args.num_fewshot,
            batch_size=args.batch_size, model_name=args.model, verbose=args.verbose,
            backend=args.backend,
        )
        result.settings["task_params"] = params  # boards match a baseline on task + params
        out = args.out
    print(evaluate.table(result))
    where = ""
    if out is not None:
        evaluate.write_result(result, out)
        where = f" -> {out}"
    print(f"{result.task}: accuracy {100 * result.accuracy:.1f}% ({sum(result.correct)}/"
          f"{result.n}) in {result.settings['seconds']:.1f} s{where}")
    return 0
