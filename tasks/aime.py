"""AIME: American Invitational Mathematics Examination problems (answers are integers 0–999).

Data: ``<data>/aime/aime{year}.jsonl`` rows ``{"id": "2024-I-1", "year", "problem", "answer"}``.
Splits: test = 2024 + 2025 (60 problems, MathArena), train = 2022 + 2023 (59; 2023-I-15 is
missing upstream). The reference outcome y* is the answer itself.

Prompt: the usual "put your final answer within \\boxed{}" instruction; ``answer_marker`` is
``\\boxed`` (the answer region starts there). Extraction: the last ``\\boxed{...}`` (nested
braces), else ``#### N``, else "final answer is N" / "Answer: N". Answers compare as integers,
so ``\\boxed{033}`` equals ``33``; a non-numeric box (``\\frac{66}{2}``) goes through
math-verify.
"""

from __future__ import annotations

from harness.data import data_file, iter_jsonl, require
from harness.errors import HarnessError
from harness.registries import register_task
from harness.types import Problem
from tasks._math import MathTask

YEARS = {"test": (2024, 2025), "train": (2022, 2023)}
ORDER = ("boxed", "hash", "phrase")
INSTRUCTION = ("Solve the following problem. The answer is an integer from 0 to 999. "
               "Reason step by step, and put your final answer within \\boxed{}.")


@register_task("aime")
class AIME(MathTask):
    """AIME 2024+2025 (test) and 2022+2023 (train), scored on the final \\boxed{} integer."""

    answer_marker = "\\boxed"
    answer_order = ORDER
    stop = ("\n\nProblem:",)
    max_new_tokens = 2048  # AIME solutions are long; raise it for reasoning models

    def __init__(self) -> None:
        self._cache: dict[str, list[Problem]] = {}

    def load(self, split: str) -> list[Problem]:
        if split not in YEARS:
            raise HarnessError(f"aime: unknown split '{split}'; allowed: {', '.join(YEARS)}")
        if split not in self._cache:
            rows: list[Problem] = []
            for year in YEARS[split]:
                path = data_file("aime", f"aime{year}.jsonl")
                rows += [_problem(row, path, lineno) for lineno, row in iter_jsonl(path)]
            self._cache[split] = rows
        return list(self._cache[split])

    def prompt(self, problem: Problem) -> str:
        return f"{INSTRUCTION}\n\nProblem: {problem.question}\nSolution:\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        content = (f"{problem.question}\n\nPlease reason step by step, and put your final "
                   "answer (an integer from 0 to 999) within \\boxed{}.")
        return [{"role": "user", "content": content}]


def _problem(row: dict, path: object, lineno: int) -> Problem:
    require(row, ("id", "problem", "answer"), path, lineno)
    answer = str(row["answer"]).strip()
    if not (answer.isdigit() and 0 <= int(answer) <= 999):
        raise HarnessError(f"{path}:{lineno}: field 'answer' must be an integer 0–999, "
                           f"got {answer!r}")
    answer = str(int(answer))
    return Problem(
        id=str(row["id"]),
        question=str(row["problem"]),
        reference=answer,
        answer=answer,
        meta={"year": row.get("year")},
    )
