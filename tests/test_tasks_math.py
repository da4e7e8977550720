"""GSM8K and AIME adapters: loading, prompts, answer extraction on real rows, answer regions."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import tasks._math as math_mod
from harness.errors import HarnessError
from harness.registries import TASKS, get_task
from harness.types import Problem, Task
from tasks._math import find_answer, parse_number
from tasks.aime import AIME
from tasks.gsm8k import GSM8K


@pytest.fixture(scope="module")
def gsm8k() -> GSM8K:
    return GSM8K()


@pytest.fixture(scope="module")
def aime() -> AIME:
    return AIME()


def _row(task: Task, split: str, pid: str) -> Problem:
    return next(p for p in task.load(split) if p.id == pid)


def test_math_helpers_doctests() -> None:
    result = doctest.testmod(math_mod)
    assert result.attempted > 10 and result.failed == 0


def test_tasks_registered() -> None:
    assert {"gsm8k", "aime", "arith"} <= set(TASKS.names())


# ----------------------------------------------------------------------------- GSM8K


def test_gsm8k_splits_and_fields(gsm8k: GSM8K) -> None:
    train, test = gsm8k.load("train"), gsm8k.load("test")
    assert (len(train), len(test)) == (7473, 1319)
    assert [p.id for p in test[:3]] == ["0", "1", "2"] and len({p.id for p in test}) == 1319
    first = test[0]
    assert first.answer == "18" and first.question.startswith("Janet’s ducks lay 16 eggs")
    assert "<<" not in first.reference and ">>" not in first.reference
    assert first.reference == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                               "She makes 9 * 2 = $18 every day at the farmer’s market.\n#### 18")
    assert all("<<" not in p.reference for p in train + test)
    with pytest.raises(HarnessError, match="unknown split 'dev'.*train, test"):
        gsm8k.load("dev")


def test_gsm8k_answers_are_normalised(gsm8k: GSM8K) -> None:
    test = gsm8k.load("test")
    assert test[146].answer == "2125"  # '#### 2,125' in the data
    assert test[489].answer == "-10" and test[1113].answer == "-3"


def test_gsm8k_prompt_format(gsm8k: GSM8K) -> None:
    p = gsm8k.load("test")[0]
    prompt = gsm8k.prompt(p)
    assert prompt.endswith(f"Question: {p.question}\nAnswer:\n") and "####" in prompt
    assert gsm8k.format_prompt(p) == prompt  # no tokenizer: the plain prompt
    (message,) = gsm8k.chat_messages(p)
    assert message["role"] == "user" and p.question in message["content"]
    assert gsm8k.answer_marker == "####" and "Question:" in gsm8k.stop


def test_gsm8k_reference_solutions_score_all(gsm8k: GSM8K) -> None:
    for split in ("train", "test"):
        problems = gsm8k.load(split)
        assert sum(gsm8k.score_many(problems, [p.reference for p in problems])) == len(problems)


@pytest.mark.parametrize("index, completion, expected", [
    # row 0: '$' before the number and 'dollars' after it
    (0, "She makes 9 * 2 = $18 every day.\n#### $18", "18"),
    (0, "She makes 9 * 2 = $18 every day. The answer is $18.00.", "18"),
    (0, "9 * 2 = 18, so the answer is 18 dollars.", "18"),
    (0, "Janet makes **18 dollars**.\n\n**Final Answer:** $18", "18"),
    (0, "She makes $\\boxed{18}$ dollars a day.", "18"),
    (0, "She makes $\\boxed{\\$18}$ a day.", "18"),
    (0, "\\boxed{\\frac{36}{2}}", "\\frac{36}{2}"),  # math-verify path
    # row 2: thousands separators
    (2, "So he made a profit of 200,000-130,000=$70,000\n#### 70,000", "70000"),
    (2, "The answer is: $70,000.", "70000"),
    # row 146: '#### 2,125' in the reference itself
    (146, "Johnny picked up 2125 blocks\n#### 2,125", "2125"),
    # negative answers
    (489, "The average is -10 degrees Fahrenheit.\n#### -10", "-10"),
    (1113, "It was -3 degrees Celsius in the morning. The answer is -3.", "-3"),
])
def test_gsm8k_extraction_on_real_rows(gsm8k: GSM8K, index: int, completion: str,
                                       expected: str) -> None:
    problem = gsm8k.load("test")[index]
    assert gsm8k.extract_answer(completion) == expected
    assert gsm8k.score(problem, completion) == 1.0


@pytest.mark.parametrize("completion", [
    "She makes 9 * 2 = 18 every day.",  # no marker: no parseable answer
    "#### 17",
    "The answer is 1,8.",  # not a number with a valid thousands separator
    "#### eighteen",
    "\\boxed{17}",
    "\\boxed{x+1}",
])
def test_gsm8k_wrong_or_unparseable(gsm8k: GSM8K, completion: str) -> None:
    assert gsm8k.score(gsm8k.load("test")[0], completion) == 0.0


@pytest.mark.parametrize("completion, expected", [
    # SmolLM2-135M on GSM8K test #92 wrote this; its leading "4" is not an answer
    ("So, the final answer is 4x^4 + 8x^2 + 25.", None),
    ("The answer is 45x.", None),  # never the "4" of "45x"
    ("#### 3.5x", None),  # nor the "3" of "3.5x"
    ("The answer is the 3rd one.", None),
    ("The answer is 20 km.", "20"),
    ("The answer is 50%.", "50"),
    ("#### 3/4 cups", "0.75"),
])
def test_gsm8k_numbers_run_into_letters_are_not_answers(gsm8k: GSM8K, completion: str,
                                                         expected: str | None) -> None:
    assert gsm8k.extract_answer(completion) == expected


def test_gsm8k_decimals_compare_exactly(gsm8k: GSM8K) -> None:
    p = Problem(id="x", question="q", reference="r", answer="2.5")
    assert gsm8k.score(p, "#### 2.50") == 1.0 and gsm8k.score(p, "#### 5/2") == 1.0
    assert gsm8k.score(p, "#### 2.05") == 0.0
    assert parse_number("$1,000") == parse_number("1000.0") == 1000


def test_gsm8k_first_hash_wins_over_later_text(gsm8k: GSM8K) -> None:
    p = gsm8k.load("test")[0]
    text = "#### 18\nQuestion: another one\nAnswer: 5 + 5 = 10\n#### 10"
    assert gsm8k.score(p, text) == 1.0


@pytest.mark.parametrize("completion, marker", [
    ("9 * 2 = 18 dollars.\n#### $18", "#### $18"),
    ("So 9 * 2 = 18. The answer is 18.", "The answer is 18"),
    ("So 9 * 2 = 18. Answer: 18", "Answer: 18"),
    ("So 9 * 2 = 18, i.e. $\\boxed{18}$.", "\\boxed{18}"),
])
def test_gsm8k_answer_span_starts_at_marker(gsm8k: GSM8K, completion: str,
                                            marker: str) -> None:
    start, end = gsm8k.answer_span(completion)
    assert completion[start:end] == marker
    assert gsm8k.answer_span("9 * 2 = 18") is None


def test_gsm8k_reference_answer_span(gsm8k: GSM8K) -> None:
    p = gsm8k.load("test")[0]
    start, end = gsm8k.answer_span(p.reference)
    assert p.reference[start:] == "#### 18" and end == len(p.reference)


def test_missing_data_dir_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    with pytest.raises(HarnessError, match="HARNESS_DATA_DIR is not set.*harness data pull"):
        get_task("gsm8k").load("test")


def test_missing_data_file_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    with pytest.raises(HarnessError, match="missing data file .*gsm8k/test.jsonl"):
        get_task("gsm8k").load("test")


def test_bad_gsm8k_row_names_file_line_field(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        '{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "q2"}\n')
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    with pytest.raises(HarnessError, match=r"test.jsonl:2: missing field 'answer'"):
        get_task("gsm8k").load("test")


# ----------------------------------------------------------------------------- AIME


def test_aime_splits(aime: AIME) -> None:
    test, train = aime.load("test"), aime.load("train")
    assert len(test) == 60 and len(train) == 59
    assert test[0].id == "2024-I-1" and test[-1].id == "2025-II-15"
    assert train[0].id == "2022-I-1" and "2023-I-15" not in {p.id for p in train}
    assert all(p.reference == p.answer and 0 <= int(p.answer) <= 999 for p in test + train)
    with pytest.raises(HarnessError, match="unknown split 'validation'"):
        aime.load("validation")


def test_aime_boxed_answers_score_all(aime: AIME) -> None:
    for split in ("test", "train"):
        problems = aime.load(split)
        completions = [f"... so the answer is $\\boxed{{{p.answer}}}$." for p in problems]
        assert sum(aime.score_many(problems, completions)) == len(problems)


@pytest.mark.parametrize("pid, completion", [
    ("2024-I-2", "Hence $xy = \\boxed{025}$."),  # MathArena's CSV wrote '025'
    ("2024-II-4", "\\boxed{033}"),
    ("2024-II-4", "First guess \\boxed{12}, but on reflection the answer is \\boxed{33}"),
    ("2024-II-4", "The final answer is 033."),
    ("2024-II-4", "Answer: 33"),
    ("2024-II-4", "m+n = \\boxed{\\frac{66}{2}}"),  # math-verify
    ("2024-I-1", "The walk takes \\boxed{204 \\text{ minutes}}."),
    ("2024-I-1", "\\boxed{\\boxed{204}}"),  # nested braces
    ("2025-II-5", "The angle is \\boxed{336^\\circ}."),
])
def test_aime_extraction_on_real_rows(aime: AIME, pid: str, completion: str) -> None:
    assert aime.score(_row(aime, "test", pid), completion) == 1.0


@pytest.mark.parametrize("completion", [
    "\\boxed{26}", "\\boxed{}", "no answer at all: 25 is my guess", "\\boxed{25",
    "\\boxed{250}",
])
def test_aime_wrong_or_unparseable(aime: AIME, completion: str) -> None:
    assert aime.score(_row(aime, "test", "2024-I-2"), completion) == 0.0


def test_aime_answer_span_and_prompt(aime: AIME) -> None:
    text = "We get $xy=25$, so the answer is $\\boxed{025}$."
    start, end = aime.answer_span(text)
    assert text[start:end] == "\\boxed{025}" and aime.answer_marker == "\\boxed"
    assert aime.answer_span("I do not know") is None
    assert aime.extract_answer(text) == "25"
    p = aime.load("test")[0]
    assert "\\boxed{}" in aime.prompt(p) and p.question in aime.prompt(p)


def test_find_answer_order_is_respected() -> None:
    text = "#### 5 and \\boxed{7}; the answer is 9"
    assert find_answer(text, ("hash", "boxed", "phrase")).text == "5"
    assert find_answer(text, ("boxed", "hash")).text == "7"
    assert find_answer(text, ("phrase",)).text == "9"
