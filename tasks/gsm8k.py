"""GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems").

Data: ``<data>/gsm8k/{train,test}.jsonl`` (7,473 / 1,319 rows, ``question``/``answer``); the id
is the row index as a string. The reference outcome y* is the reference solution without its
``<<…>>`` calculator annotations; the gold answer is the text after ``####`` without commas.

Prompt (plain): one line of instruction, then lm-eval's ``Question: …\\nAnswer:`` layout, ending
in a newline so the completion starts on a fresh line exactly like the reference solution does
(prompt + reference is then the natural training text, and few-shot examples need no
delimiter). The model reasons and ends with ``#### N``. Generation stops at the next
``Question:``.

Scoring: ``#### N`` first, then the last ``\\boxed{}``, then "The answer is N" (see
``tasks/_math.py``); 1 if the value equals the gold answer exactly, else 0.
"""

from __future__ import annotations

from harness.data import data_file, iter_jsonl, require
from harness.errors import HarnessError
from harness.registries import register_task
from harness.types import Problem
from tasks._math import MathTask, strip_calculator_annotations

SPLITS = ("train", "test")
INSTRUCTION = "Solve the math problem step by step. End with the final answer as '#### <number>'."
ORDER = ("hash", "boxed", "phrase")


@register_task("gsm8k")
class GSM8K(MathTask):
    """GSM8K grade-school math word problems, scored on the final '#### N' answer."""

    answer_marker = "####"
    answer_order = ORDER
    stop = ("Question:",)
    max_new_tokens = 512  # references: mean 93, max 342 SmolLM2 tokens; chat models say more

    def __init__(self) -> None:
        self._cache: dict[str, list[Problem]] = {}

    def load(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise HarnessError(f"gsm8k: unknown split '{split}'; allowed: {', '.join(SPLITS)}")
        if split not in self._cache:
            path = data_file("gsm8k", f"{split}.jsonl")
            self._cache[split] = [_problem(row, i, path, lineno)
                                  for i, (lineno, row) in enumerate(iter_jsonl(path))]
        return list(self._cache[split])

    def prompt(self, problem: Problem) -> str:
        return f"{INSTRUCTION}\n\nQuestion: {problem.question}\nAnswer:\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        content = (f"{problem.question}\n\nSolve the problem step by step. On the last line, "
                   "write the final answer as '#### <number>'.")
        return [{"role": "user", "content": content}]


def _problem(row: dict, index: int, path: object, lineno: int) -> Problem:
    require(row, ("question", "answer"), path, lineno)
    solution = str(row["answer"])
    if "####" not in solution:
        raise HarnessError(f"{path}:{lineno}: field 'answer' has no '#### <answer>' line")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return Problem(
        id=str(index),
        question=str(row["question"]),
        reference=strip_calculator_annotations(solution),
        answer=answer,
    )
