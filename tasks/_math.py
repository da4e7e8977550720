"""Answer extraction and comparison shared by the math tasks (gsm8k, arith, aime).

A completion's *answer* is found by one of three rules, tried in the order a task asks for:

- ``hash``: GSM8K's ``#### N`` — the first ``####`` followed by a number (GSM8K references
  carry exactly one; a model that rambles on after it is judged by the first).
- ``boxed``: the last ``\\boxed{...}`` (nested braces allowed).
- ``phrase``: the last "The answer is N" / "final answer is N" / "Answer: N".

Numbers may carry ``$``, thousands separators (``1,000``), a sign, decimals, a fraction
(``3/4``) and trailing units (``18 dollars``): they are compared as exact fractions, so
``$18.00`` equals ``18`` and ``033`` equals ``33``. ``\\boxed{}`` contents that are not a plain
number (``\\frac{1}{2}``, ``336^\\circ``) go through math-verify.

The match also gives the answer *region* (``Task.answer_span``): it starts at the marker
(``####``, ``\\boxed``, or the phrase) and ends after the answer.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import ClassVar

from harness.types import Problem, Task

#: Text allowed between a marker and its number: spaces, ``:``, ``=``, markdown ``**``, ``$``,
#: ``\$`` and ``\(``.
_PREFIX = r"(?:\s|[:=*$]|\\\$|\\\(|\\\[)*"
#: A number: optional sign and ``$`` (``-$5``), thousands separators or plain digits, optional
#: decimals, optional ``/denominator``. It must not run on into more digits, ``,d``/``.d``, a
#: letter or ``^``/``_``: "4x^4", "45x" or "3rd" hold no answer (never "4" or "3"), while
#: "20 km", "50%" and "$5." do.
_NUMBER = (
    r"[-−]?\s?(?:\\?\$)?\s?(?:\d{1,3}(?:(?:,|\{,\})\d{3})+(?!\d)|\d+)(?:\.\d+)?"
    r"(?:\s?/\s?\d+)?(?![\dA-Za-z^_]|[.,]\d)|[-−]?\.\d+(?![\dA-Za-z^_])"
)
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####" + _PREFIX + r"(" + _NUMBER + r")")
_PHRASE_RE = re.compile(
    r"(?i)(?:\bthe\s+)?(?:\bfinal\s+)?\banswer(?:\s+is|\s*[:=])" + _PREFIX + r"(" + _NUMBER + r")"
)
_BOXED_TOKEN_RE = re.compile(r"\\boxed\s*\{|[{}]")
#: LaTeX decoration removed from a ``\\boxed{}`` content before trying it as a plain number.
_LATEX_NOISE_RE = re.compile(
    r"\\[,!;: ]|\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|\^\s*\{?\\circ\}?|\\%|%|\$|\\\$|\{,\}|\s"
)


@dataclass(frozen=True)
class AnswerMatch:
    """An extracted answer: the region [start, end) of the completion, the answer text as
    written (``raw``) and its exact value (None when it is not a plain number)."""

    start: int
    end: int
    raw: str
    value: Fraction | None

    @property
    def text(self) -> str:
        """The canonical answer text: the number (``1000``, ``-3``, ``0.5``, ``3/4``) or, for a
        non-numeric ``\\boxed{}``, its content."""
        return format_number(self.value) if self.value is not None else self.raw.strip()


def parse_number(text: str) -> Fraction | None:
    """The exact value of a number as written, or None.

    >>> parse_number("$1,000.00")
    Fraction(1000, 1)
    >>> parse_number("-3"), parse_number("033"), parse_number("3/4")
    (Fraction(-3, 1), Fraction(33, 1), Fraction(3, 4))
    >>> parse_number("twelve") is None
    True
    """
    s = text.replace("−", "-").replace("{,}", "").replace("\\$", "").replace("$", "")
    s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    num, _, den = s.partition("/")
    try:
        value = Fraction(Decimal(num))
        if den:
            value /= Fraction(Decimal(den))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def format_number(value: Fraction) -> str:
    """Canonical text of a value: integers plainly, terminating decimals as decimals.

    >>> format_number(Fraction(18)), format_number(Fraction(1, 2)), format_number(Fraction(1, 3))
    ('18', '0.5', '1/3')
    """
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # terminating decimal
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def find_hash(text: str) -> AnswerMatch | None:
    """GSM8K's ``#### N``: the first ``####`` followed by a number.

    >>> m = find_hash("9 * 2 = 18 dollars.\\n#### $18.00")
    >>> m.text, m.start
    ('18', 20)
    >>> find_hash("no marker here") is None
    True
    """
    m = _HASH_RE.search(text)
    if m is None:
        return None
    return AnswerMatch(m.start(), m.end(1), m.group(1), parse_number(m.group(1)))


def find_phrase(text: str) -> AnswerMatch | None:
    """The last "The answer is N" / "final answer is N" / "Answer: N".

    >>> find_phrase("So the answer is 1,000 dollars.").text
    '1000'
    >>> find_phrase("The final answer is: -3.").text
    '-3'
    """
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    return AnswerMatch(last.start(), last.end(1), last.group(1), parse_number(last.group(1)))


def boxed_contents(text: str) -> list[tuple[int, int, str]]:
    """Every ``\\boxed{...}`` as (start of ``\\boxed``, end after ``}``, content); nested
    braces are matched, an unclosed box is skipped.

    >>> boxed_contents(r"x = \\boxed{\\frac{1}{2}} or \\boxed{7")
    [(4, 23, '\\\\frac{1}{2}')]
    """
    return [(start, end, text[a:b]) for start, end, a, b in _boxed_spans(text)]


def _boxed_spans(text: str) -> list[tuple[int, int, int, int]]:
    """(start, end, content start, content end) of every closed box, by start. One pass, so
    it stays linear even for a degenerate ``'\\boxed{' * 10**4``."""
    out, open_boxes, depth = [], [], 0  # open_boxes: (start, content start, depth outside)
    for m in _BOXED_TOKEN_RE.finditer(text):
        if m.group() == "}":
            depth -= 1
            if open_boxes and open_boxes[-1][2] == depth:
                start, body, _ = open_boxes.pop()
                out.append((start, m.end(), body, m.start()))
        elif m.group() == "{":
            depth += 1
        else:
            open_boxes.append((m.start(), m.end(), depth))
            depth += 1
    return sorted(out)


def find_boxed(text: str) -> AnswerMatch | None:
    """The last non-empty ``\\boxed{...}``; ``value`` set when its content is a plain number.

    >>> find_boxed(r"so $\\boxed{033}$").text
    '33'
    >>> find_boxed(r"\\boxed{\\frac{3}{4}}").raw
    '\\\\frac{3}{4}'
    """
    for start, end, a, b in reversed(_boxed_spans(text)):
        content = text[a:b]
        if content.strip():
            return AnswerMatch(start, end, content, boxed_number(content))
    return None


def boxed_number(content: str) -> Fraction | None:
    """The value of a ``\\boxed{}`` content that is a plain number after removing LaTeX
    decoration (``\\$``, ``\\,``, ``{,}``, ``\\text{...}``, degrees, percent), else None.

    >>> boxed_number(r"\\$1{,}000"), boxed_number(r"336^\\circ"), boxed_number("x+1")
    (Fraction(1000, 1), Fraction(336, 1), None)
    """
    cleaned = _LATEX_NOISE_RE.sub("", content)
    if not _NUMBER_RE.fullmatch(cleaned):
        return None
    return parse_number(cleaned)


#: Longer ``\\boxed{}`` contents are judged wrong without calling math-verify.
MAX_LATEX = 500

FINDERS = {"hash": find_hash, "boxed": find_boxed, "phrase": find_phrase}


def find_answer(text: str, order: tuple[str, ...]) -> AnswerMatch | None:
    """The answer found by the first rule of ``order`` (names of :data:`FINDERS`) that matches.

    >>> find_answer("x \\\\boxed{4} #### 5", ("hash", "boxed")).text
    '5'
    >>> find_answer("x \\\\boxed{4} #### 5", ("boxed", "hash")).text
    '4'
    """
    for name in order:
        match = FINDERS[name](text)
        if match is not None:
            return match
    return None


def answers_equal(match: AnswerMatch | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold answer (exact value; math-verify for
    non-numeric ``\\boxed{}`` contents).

    >>> answers_equal(find_hash("#### 18.00"), "18"), answers_equal(None, "18")
    (True, False)
    """
    if match is None:
        return False
    gold_value = parse_number(gold)
    if match.value is not None and gold_value is not None:
        return match.value == gold_value
    return _math_verify_equal(gold, match.raw)


def _math_verify_equal(gold: str, latex: str) -> bool:
    """math-verify on ``$\\boxed{latex}$`` vs the gold answer. Its timeouts use SIGALRM, which
    only works in the main thread, so elsewhere (thread pools) it runs without one."""
    if len(latex) > MAX_LATEX:  # a degenerate answer: not worth a symbolic parse
        return False
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        pred = parse(f"$\\boxed{{{latex}}}$", parsing_timeout=timeout)
        ref = parse(f"${gold}$", parsing_timeout=timeout)
        return bool(pred and ref and verify(ref, pred, timeout_seconds=timeout))
    except Exception:  # a malformed model answer is simply wrong, whatever math-verify raises
        return False


def strip_calculator_annotations(solution: str) -> str:
    """GSM8K's reference solution without its ``<<…>>`` calculator annotations.

    >>> strip_calculator_annotations("9 * 2 = $<<9*2=18>>18 a day.\\n#### 18")
    '9 * 2 = $18 a day.\\n#### 18'
    """
    return re.sub(r"<<[^<>]*>>", "", solution)


class MathTask(Task):
    """A task whose completions end in a final number: extraction, scoring and the answer
    region all come from :func:`find_answer` with the task's ``answer_order``."""

    #: The extraction rules tried, in order ("hash", "boxed", "phrase").
    answer_order: ClassVar[tuple[str, ...]] = ("hash",)

    def extract(self, completion: str) -> AnswerMatch | None:
        return find_answer(completion, self.answer_order)

    def extract_answer(self, completion: str) -> str | None:
        """The canonical extracted answer ('33' for '\\boxed{033}'), or None."""
        match = self.extract(completion)
        return None if match is None else match.text

    def score(self, problem: Problem, completion: str) -> float:
        return float(answers_equal(self.extract(completion), problem.answer))

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        match = self.extract(completion)
        return None if match is None else (match.start, match.end)
