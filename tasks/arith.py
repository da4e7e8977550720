"""arith: synthetic multi-step arithmetic word problems in GSM8K's format (no data files).

Built for CPU experiments: a small transformer trained from scratch (the ``micro-arith`` preset)
can learn it, so weighting methods can be compared without a GPU. Everything is deterministic
in ``seed``: the same parameters give the same problems in every process.

A problem is a person, an object and ``n_steps`` operations on a running count (``+``, ``-``,
``*`` from ``ops``); every intermediate count stays in [0, ``max_value``]. The reference trace
mixes calculation steps written ``a op b = c`` with filler sentences (restatements, "Let me
double-check the total.") — the kind of tokens credit-assignment methods should learn to
discount — and ends with ``#### N``, so scoring and answer regions are GSM8K's::

    Question: Mia has 7 coins. She finds 5 more coins. Then she gives away 4 coins.
    How many coins does Mia have now?
    Answer:
    Mia starts with 7 coins.
    She finds 5 more, so 7 + 5 = 12.
    Now she has 12 coins.
    She gives away 4, so 12 - 4 = 8.
    #### 8

Splits are disjoint: test and train come from differently seeded generators, and a train
question identical to a test question is dropped (questions are unique within a split too).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.registries import register_task
from harness.types import Problem
from tasks._math import MathTask

# (name, subject, object pronoun) — a handful of each keeps the vocabulary small.
PEOPLE = (("Tom", "he", "him"), ("Anna", "she", "her"), ("Sam", "he", "him"),
          ("Mia", "she", "her"), ("Leo", "he", "him"), ("Zoe", "she", "her"))
OBJECTS = ("apples", "books", "marbles", "stickers", "coins", "cookies")
# Question sentence / trace sentence per operation ({s}: subject, {o}: object pronoun).
STEPS = {
    "+": (("{S} buys {b} more {obj}.", "{S} buys {b} more, so {c} + {b} = {r}."),
          ("{S} finds {b} more {obj}.", "{S} finds {b} more, so {c} + {b} = {r}."),
          ("A friend gives {o} {b} {obj}.", "A friend gives {o} {b}, so {c} + {b} = {r}.")),
    "-": (("{S} gives away {b} {obj}.", "{S} gives away {b}, so {c} - {b} = {r}."),
          ("{S} loses {b} {obj}.", "{S} loses {b}, so {c} - {b} = {r}."),
          ("{S} sells {b} {obj}.", "{S} sells {b}, so {c} - {b} = {r}.")),
    "*": (("{S} ends up with {b} times as many {obj}.",
           "{S} ends up with {b} times as many, so {c} * {b} = {r}."),),
}
FILLERS = ("Let me double-check the total.", "Now {s} has {r} {obj}.",
           "We need to keep track of the {obj}.", "Let's go step by step.")
QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?")
FILLER_P = 0.5  # chance of one filler sentence after each step
ALL_OPS = "+-*"


@dataclass(frozen=True)
class _Item:
    question: str
    trace: str
    answer: int
    ops: str
    fillers: int


@register_task("arith")
class Arith(MathTask):
    """Synthetic multi-step arithmetic word problems (GSM8K format), deterministic by seed."""

    answer_marker = "####"
    answer_order = ("hash",)  # arith answers only as #### N
    stop = ("Question:", "\n\n")
    # Reference traces take ≈ 15 + 30·n_steps tokens with the micro-arith tokenizer (n_steps=2:
    # mean 68, max 104 over both splits; SmolLM2's: mean 59, max 81); 64 + 40·n_steps leaves
    # ~40% slack over the longest.
    max_new_tokens = 144

    def __init__(self, n_steps: int = 2, max_operand: int = 20, ops: str = ALL_OPS,
                 seed: int = 0, n_train: int = 5000, n_test: int = 500,
                 max_value: int | None = None) -> None:
        _check_params(n_steps, max_operand, ops, n_train, n_test, max_value)
        self.n_steps, self.max_operand, self.ops, self.seed = n_steps, max_operand, ops, seed
        self.n_train, self.n_test = n_train, n_test
        self.max_value = max_value if max_value is not None else 5 * max_operand
        self.max_new_tokens = 64 + 40 * n_steps  # instance attribute: scales with n_steps
        self._cache: dict[str, list[Problem]] = {}

    # ------------------------------------------------------------------ data

    def load(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise HarnessError(f"arith: unknown split '{split}'; allowed: train, test")
        if not self._cache:
            test = self._generate("test", self.n_test, set())
            train = self._generate("train", self.n_train, {p.question for p in test})
            self._cache = {"test": test, "train": train}
        return list(self._cache[split])

    def _generate(self, split: str, n: int, exclude: set[str]) -> list[Problem]:
        rng = random.Random(f"arith-{split}-{self.seed}")  # str seeds hash with sha512: stable
        seen, out, misses = set(exclude), [], 0
        while len(out) < n and misses < 2000:  # 2000 duplicates in a row: the space is spent
            item = self.make_item(rng)
            if item.question in seen:
                misses += 1
                continue
            seen.add(item.question)
            misses = 0
            out.append(Problem(id=str(len(out)), question=item.question, reference=item.trace,
                               answer=str(item.answer),
                               meta={"ops": item.ops, "fillers": item.fillers}))
        if len(out) < n:
            raise HarnessError(
                f"arith: only {len(out)} distinct {split} problems exist for n_steps="
                f"{self.n_steps}, max_operand={self.max_operand}, ops='{self.ops}' "
                f"(asked for {n}); raise max_operand or n_steps, or lower n_{split}")
        return out

    def make_item(self, rng: random.Random) -> _Item:
        """One problem: its question, reference trace and answer. A draw that reaches a count
        no allowed operation can continue from (ops='-' at 0) is redrawn."""
        for _ in range(1000):
            item = self._draw(rng)
            if item is not None:
                return item
        raise HarnessError(f"arith: cannot build {self.n_steps} steps with ops='{self.ops}' "
                           f"within max_value={self.max_value}; change ops or raise max_value")

    def _draw(self, rng: random.Random) -> _Item | None:
        name, subj, obj_pron = rng.choice(PEOPLE)
        obj = rng.choice(OBJECTS)
        fmt = {"name": name, "s": subj, "S": subj.capitalize(), "o": obj_pron, "obj": obj}
        count, q, t, ops = self._start(rng, fmt)
        fillers = 0
        while len(ops) < self.n_steps:
            picked = self._pick_op(rng, count)
            if picked is None:
                return None
            op, b = picked
            q_tpl, t_tpl = rng.choice(STEPS[op])
            result = _apply(op, count, b)
            step = {**fmt, "b": b, "c": count, "r": result}
            prefix = "Then " if len(q) > 1 and rng.random() < 0.3 else ""
            sentence = q_tpl.format(**step)
            q.append(prefix + sentence[0].lower() + sentence[1:] if prefix else sentence)
            t.append(t_tpl.format(**step))
            count, ops = result, ops + op
            if rng.random() < FILLER_P:
                t.append(rng.choice(FILLERS).format(**fmt, r=count))
                fillers += 1
        q.append(rng.choice(QUESTIONS).format(**fmt))
        t.append(f"#### {count}")
        return _Item(_singular(" ".join(q)), _singular("\n".join(t)), count, ops, fillers)

    def _start(self, rng: random.Random, fmt: dict[str, str]
               ) -> tuple[int, list[str], list[str], str]:
        """The opening: '{name} has a {obj}.' or, with '*', 'a bags with b {obj} in each'."""
        a_hi = min(5, self.max_operand, self.max_value // 2)
        if "*" in self.ops and a_hi >= 2 and rng.random() < 0.25:
            a = rng.randint(2, a_hi)
            b = rng.randint(2, min(self.max_operand, self.max_value // a))
            fmt_ab = {**fmt, "a": a, "b": b, "r": a * b}
            q = "{name} has {a} bags with {b} {obj} in each bag.".format(**fmt_ab)
            t = "{name} has {a} bags of {b} {obj}, so {a} * {b} = {r}.".format(**fmt_ab)
            return a * b, [q], [t], "*"
        a = rng.randint(1, self.max_operand)
        q = "{name} has {a} {obj}.".format(**fmt, a=a)
        t = "{name} starts with {a} {obj}.".format(**fmt, a=a)
        return a, [q], [t], ""

    def _pick_op(self, rng: random.Random, count: int) -> tuple[str, int] | None:
        """An operation and operand that keep the count within [0, max_value]."""
        choices = []
        if "+" in self.ops and count + 1 <= self.max_value:
            choices.append(("+", rng.randint(1, min(self.max_operand, self.max_value - count))))
        if "-" in self.ops and count >= 1:
            choices.append(("-", rng.randint(1, min(self.max_operand, count))))
        if "*" in self.ops and 1 <= count <= self.max_value // 2:
            hi = min(5, self.max_operand, self.max_value // count)
            choices.append(("*", rng.randint(2, hi)))
        return rng.choice(choices) if choices else None

    # ------------------------------------------------------------------ prompting, scoring

    def prompt(self, problem: Problem) -> str:
        return f"Question: {problem.question}\nAnswer:\n"

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        content = (f"{problem.question}\n\nSolve it step by step, then write the final answer "
                   "on the last line as '#### <number>'.")
        return [{"role": "user", "content": content}]


def _singular(text: str) -> str:
    """'1 apples' → '1 apple', '1 more coins' → '1 more coin'."""
    return _ONE_RE.sub(lambda m: m.group(0)[:-1], text)


_ONE_RE = re.compile(r"\b1 (?:more )?(?:" + "|".join(o[:-1] for o in OBJECTS) + r")s\b")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _check_params(n_steps: int, max_operand: int, ops: str, n_train: int, n_test: int,
                  max_value: int | None) -> None:
    def bad(name: str, value: object, allowed: str) -> HarnessError:
        return HarnessError(f"arith: {name}={value!r} is not allowed; {allowed}")

    if not isinstance(n_steps, int) or not 1 <= n_steps <= 8:
        raise bad("n_steps", n_steps, "use an integer from 1 to 8")
    if not isinstance(max_operand, int) or max_operand < 2:
        raise bad("max_operand", max_operand, "use an integer ≥ 2")
    if not isinstance(ops, str) or not ops or set(ops) - set(ALL_OPS):
        raise bad("ops", ops, "use a non-empty string of '+', '-', '*'")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 1:
            raise bad(name, value, "use an integer ≥ 1")
    if max_value is not None and (not isinstance(max_value, int) or max_value < max_operand):
        raise bad("max_value", max_value, f"use an integer ≥ max_operand ({max_operand})")
