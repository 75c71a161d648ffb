import json
import re
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lightning_premem import answers
from lightning_premem.answers import extract_boxed, extract_gsm8k_answer, grade

GSM8K_TEST = Path(__file__).resolve().parent / "data" / "gsm8k" / "test.jsonl"
FINAL_LINE = re.compile(r"\n#### (?P<answer>[^\n]*)$")
GRADES = ("correct", "wrong", "unparseable")


def _gsm8k_solutions() -> list[str]:
    with GSM8K_TEST.open(encoding="utf-8") as f:
        return [json.loads(line)["answer"] for line in f]


SOLUTIONS = _gsm8k_solutions()


# ----------------------------------------------------------------------------- GSM8K test set


def test_gsm8k_test_set_is_the_unchanged_1319_rows():
    assert len(SOLUTIONS) == 1319
    # every reference ends in exactly one "#### <integer>" line, some with thousands commas
    for solution in SOLUTIONS:
        match = FINAL_LINE.search(solution)
        assert match is not None and solution.count("####") == 1
        assert re.fullmatch(r"-?\d{1,3}(,\d{3})*|-?\d+", match["answer"])


def test_every_reference_solution_is_correct_against_itself():
    assert [grade(s, s) for s in SOLUTIONS] == ["correct"] * len(SOLUTIONS)


def test_every_changed_final_number_is_wrong():
    graded = []
    for solution in SOLUTIONS:
        match = FINAL_LINE.search(solution)
        assert match is not None
        value = int(match["answer"].replace(",", ""))
        for changed in (value + 1, value - 1, -value if value else 7):
            completion = solution[: match.start("answer")] + str(changed)
            graded.append(grade(completion, solution))
    assert graded == ["wrong"] * (3 * len(SOLUTIONS))


def test_every_reformatted_final_number_is_still_correct():
    for solution in SOLUTIONS:
        match = FINAL_LINE.search(solution)
        assert match is not None
        value = int(match["answer"].replace(",", ""))
        reformatted = f"${value:,}.00 dollars."
        assert grade(solution[: match.start("answer")] + reformatted, solution) == "correct"
        assert grade(reformatted, solution) == "unparseable"  # a bare number is not an answer slot


def test_every_solution_without_its_final_line_is_unparseable():
    # No GSM8K solution phrases "the answer is" / "Answer:" in its reasoning, so once the
    # "#### N" line is gone nothing is left to grade: no exceptions.
    truncated = [FINAL_LINE.sub("", s) for s in SOLUTIONS]
    assert all("####" not in t for t in truncated)
    assert [grade(t, s) for t, s in zip(truncated, SOLUTIONS, strict=True)] == ["unparseable"] * len(SOLUTIONS)


# ----------------------------------------------------------------------------- GSM8K formats


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 18", "18"),
        ("####18", "18"),
        ("#### 18\n", "18"),
        ("####\n18", "18"),
        ("reasoning\n#### 18<|endoftext|>", "18"),
        ("#### 1,234", "1234"),
        ("#### 1,450,000", "1450000"),
        ("#### $18", "18"),
        ("#### \\$18", "18"),
        ("#### $1,234.50", "1234.5"),
        ("#### 18 dollars", "18"),
        ("#### 5 apples.", "5"),
        ("#### 18.", "18"),
        ("#### -3", "-3"),
        ("#### \u22123", "-3"),
        ("#### -$3", "-3"),
        ("#### $-3", "-3"),
        ("#### +7", "7"),
        ("#### 0.5", "0.5"),
        ("#### .5", "0.5"),
        ("#### 18.00", "18"),
        ("#### 50%", "50"),
        ("#### 12.5 %", "12.5"),
        ("#### 3/4", "0.75"),
        ("#### -3/4", "-0.75"),
        ("#### 1/3", "1/3"),
        ("#### **18**", "18"),
        ("#### `18`", "18"),
        ("#### $18$", "18"),
        ("#### \\boxed{18}", "18"),
        ("#### 18. That is all, 2 of us agree.", "18"),
        ("#### 7\nlater #### 18", "18"),  # the last marker wins
        ("The answer is 18. The answer is 19", "19"),  # the last phrase wins
        ("The answer is 18.", "18"),
        ("the final answer is 18", "18"),
        ("The final answer is: **$18**.", "18"),
        ("Answer: 18", "18"),
        ("ANSWER : 18", "18"),
        ("**Answer:** 18", "18"),
        ("**Answer**: 18", "18"),
        ("So the answer is $1,000 dollars.", "1000"),
        ("Final Answer: The final answer is $-0.25$. I hope it is correct.", "-0.25"),
        ("The answer is 18\n#### 19", "19"),  # "####" takes precedence over phrases
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no digits at all",
        "9 * 2 = 18",  # no answer slot: the last number in the text is NOT taken
        "She makes 9 * 2 = $<<9*2=18>>18 every day.",
        "#### banana",
        "####",
        "#### \n",
        "18 ####",
        "#### 3 + 4 = 7",  # ambiguous slot
        "#### 18 or 19",
        "#### 1,23",
        "#### 1,2345",
        "#### 1e6",
        "#### 10^6",
        "#### 5/x",
        "#### 3/0",
        "#### x = 18",
        "#### 1 1/2",
        "#### 18\n#### ?",  # the last marker decides, even if an earlier one had a number
        "#### " + "1" * 200,  # absurdly long numbers are not answers
        "The answer is correct.",
        "The answer is 18 because 2 * 9 = 18",
        "The answer is 18. I hope the answer is right.",  # the last phrase decides
        "The answer is\n18",  # phrases need the number on their own line
        "my answers: 18",
        "the answer isn't 18",
    ],
)
def test_extract_gsm8k_answer_unparseable(text):
    assert extract_gsm8k_answer(text) is None
    assert grade(text, "#### 18") == "unparseable"


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("#### 18", "#### 18", "correct"),
        ("#### 18.00", "#### 18", "correct"),
        ("#### $1,000", "1000", "correct"),
        ("#### 1000", "#### 1,000", "correct"),
        ("The answer is 0.75", "3/4", "correct"),
        ("#### .5", "0.5", "correct"),
        ("#### -3", "-3", "correct"),
        ("#### 50%", "50", "correct"),
        ("#### 18", "18 dollars", "correct"),
        ("#### 18", "The answer is 18.", "correct"),
        ("#### 17", "#### 18", "wrong"),
        ("#### -18", "#### 18", "wrong"),
        ("#### 18.01", "#### 18", "wrong"),
        ("#### 0.5", "#### 5", "wrong"),
        ("#### 1.000", "#### 1,000", "wrong"),  # a decimal point is not a thousands separator
        ("The answer is 7", "#### 18", "wrong"),
        ("#### 1/3", "0.333333", "wrong"),  # exact comparison
        ("#### banana", "#### 18", "unparseable"),
        ("I think 18", "#### 18", "unparseable"),
    ],
)
def test_grade_gsm8k(completion, reference, expected):
    assert grade(completion, reference) == expected
    assert grade(completion, reference, kind="gsm8k") == expected


# ----------------------------------------------------------------------------- MATH extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{5}", "5"),
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not nest
        (r"\boxed{a \\ b}", r"a \\ b"),
        (r"\boxed { 7 }", "7"),
        (r"\fbox{5}", "5"),
        (r"\boxed{1} and \fbox{2}", "2"),
        (r"\fbox{1} and \boxed{2}", "2"),
        (r"$\boxed 5$", "5"),
        (r"\boxed 5 apples", "5"),
        (r"\boxed{[0, \infty)}", r"[0, \infty)"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no box, the answer is 5",
        r"\boxed{",
        r"\boxed{\frac{1}{2}",
        r"\boxed{5} but then \boxed{6",  # the last box decides
        r"\boxed{}",
        r"\boxed{  }",
        r"\boxed",
        r"\boxed $",
        r"\boxedx{5}",
        r"\boxed\frac12",
        r"\boxed{5\}",
    ],
)
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None
    assert grade(text, r"\boxed{5}", kind="math") == "unparseable"


# ----------------------------------------------------------------------------- MATH with math-verify


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5", "correct"),
        (r"\boxed{0.5}", r"\frac{1}{2}", "correct"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}", "correct"),
        (r"\boxed{\tfrac{1}{2}}", r"The answer is $\boxed{\frac12}$.", "correct"),
        (r"\boxed{x^2+1}", "1+x^2", "correct"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", "correct"),
        (r"\boxed{x = 5}", "5", "correct"),
        (r"\boxed{90^\circ}", "90", "correct"),
        (r"\boxed{5\text{ cm}}", "5", "correct"),
        (r"\boxed{\{1,2\}}", r"\{2,1\}", "correct"),
        (r"\boxed{1} or rather \boxed{2}", "2", "correct"),
        (r"\boxed{3}", "5", "wrong"),
        (r"\boxed{\frac{1}{3}}", "0.5", "wrong"),
        (r"\boxed{x^2-1}", "x^2+1", "wrong"),
        (r"\boxed{2} or rather \boxed{1}", "2", "wrong"),
        ("The answer is 5.", "5", "unparseable"),  # MATH answers live in \boxed{}
    ],
)
def test_grade_math_with_math_verify(completion, reference, expected):
    pytest.importorskip("math_verify")
    assert answers._load_math_verify() is not None
    assert grade(completion, reference, kind="math") == expected


def test_math_verify_outside_the_main_thread():
    # math-verify's timeout uses signal.alarm, which raises outside the main thread
    pytest.importorskip("math_verify")
    results = []
    thread = threading.Thread(target=lambda: results.append(grade(r"\boxed{\frac{1}{4}}", "0.25", kind="math")))
    thread.start()
    thread.join(timeout=60)
    assert results == ["correct"]


def test_overly_complex_answers_skip_math_verify():
    pytest.importorskip("math_verify")
    nested = "{" * 50 + "}" * 50  # sympy would spend its whole timeout on this
    assert grade(rf"\boxed{{{nested}}}", "42", kind="math") == "wrong"
    assert grade(r"\boxed{" + "1+" * 400 + "1}", "42", kind="math") == "wrong"


# ----------------------------------------------------------------------------- MATH fallback


@pytest.fixture
def no_math_verify(monkeypatch):
    monkeypatch.setattr(answers, "_load_math_verify", lambda: None)
    monkeypatch.setattr(answers, "_FALLBACK_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def test_fallback_warns_once(no_math_verify):
    assert grade(r"\boxed{\frac{1}{2}}", "0.5", kind="math") == "correct"
    assert grade(r"\boxed{3}", "0.5", kind="math") == "wrong"
    messages = [str(w.message) for w in no_math_verify]
    assert len(messages) == 1, messages
    assert no_math_verify[0].category is UserWarning
    assert "math-verify is not installed" in messages[0]
    assert "normalising string comparison" in messages[0]
    assert "pip install 'lightning-premem[math]'" in messages[0]
    assert no_math_verify[0].filename == __file__  # points at the caller of grade()


def test_gsm8k_never_warns(no_math_verify):
    assert grade("#### 1", "1") == "correct"
    assert not no_math_verify


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (r"\boxed{5}", "5", "correct"),
        (r"\boxed{\frac{1}{2}}", "0.5", "correct"),
        (r"\boxed{\dfrac{1}{2}}", r"\frac12", "correct"),
        (r"\boxed{\tfrac12}", "1/2", "correct"),
        (r"\boxed{-\frac{3}{4}}", "-0.75", "correct"),
        (r"\boxed{18.00}", "18", "correct"),
        (r"\boxed{1{,}000}", "1000", "correct"),
        (r"\boxed{1,000}", "1000", "correct"),
        (r"\boxed{\$18}", "18", "correct"),
        (r"\boxed{$18$}", "18", "correct"),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)", "correct"),
        (r"\boxed{\frac{\sqrt3}{2}}", r"\frac{\sqrt{3}}{2}", "correct"),
        (r"\boxed{2\!\cdot\!3}", r"2 \cdot 3", "correct"),
        (r"\boxed{a\,b\;c\:d}", "abcd", "correct"),
        (r"\boxed{90^\circ}", "90", "correct"),
        (r"\boxed{90^{\circ}}", "90", "correct"),
        (r"\boxed{5\text{ cm}}", "5", "correct"),
        (r"\boxed{5 \mbox{ inches}}", r"5\text{ in}", "correct"),
        (r"\boxed{\text{(A)}}", "(A)", "correct"),
        (r"\boxed{10\%}", "10", "correct"),
        (r"\boxed{2.}", "2", "correct"),
        (r"\boxed{x = 5}", "5", "correct"),
        (r"\boxed{y=2x+3}", "2x+3", "correct"),
        (r"\boxed{\rightarrow}", r"\rightarrow", "correct"),  # \right is not stripped from \rightarrow
        (r"\boxed{3}", "5", "wrong"),
        (r"\boxed{\frac{1}{3}}", "0.33", "wrong"),
        (r"\boxed{x+1}", "1+x", "wrong"),  # no algebra without math-verify
        (r"\boxed{=}", "5", "wrong"),
        (r"\boxed{\,}", "5", "unparseable"),
        (r"\boxed{$ $}", "5", "unparseable"),
    ],
)
def test_fallback_comparison(no_math_verify, completion, reference, expected):
    assert grade(completion, reference, kind="math") == expected


# ----------------------------------------------------------------------------- callables, errors


@pytest.mark.parametrize(
    ("result", "expected"),
    [(True, "correct"), (False, "wrong"), (None, "unparseable"), (np.True_, "correct"), (np.False_, "wrong")],
)
def test_callable_kind(result, expected):
    seen = []

    def check(completion, reference):
        seen.append((completion, reference))
        return result

    assert grade("my output", "my reference", kind=check) == expected
    assert seen == [("my output", "my reference")]


def test_callable_kind_gets_any_reference():
    # the reference is the callable's business: no final answer needed
    assert grade("Paris", "paris", kind=lambda c, r: c.lower() == r.lower()) == "correct"


@pytest.mark.parametrize("result", ["correct", 1, 0.0, [True]])
def test_callable_kind_must_return_bool_or_none(result):
    with pytest.raises(TypeError, match=r"True \(correct\), False \(wrong\) or None \(unparseable\)"):
        grade("a", "b", kind=lambda c, r: result)


def test_callable_kind_exceptions_propagate():
    def check(completion, reference):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        grade("a", "b", kind=check)


@pytest.mark.parametrize("kind", ["GSM8K", "Math", "gsm", "", None, 3])
def test_bad_kind(kind):
    with pytest.raises(ValueError, match=r"'gsm8k', 'math' or a callable"):
        grade("#### 1", "#### 1", kind=kind)


@pytest.mark.parametrize(
    ("completion", "reference", "name"),
    [
        (b"#### 1", "#### 1", "completion"),
        (None, "1", "completion"),
        ("#### 1", 1, "reference"),
        ("1", None, "reference"),
    ],
)
def test_bad_types(completion, reference, name):
    with pytest.raises(TypeError, match=f"`{name}` must be a str"):
        grade(completion, reference)
    with pytest.raises(TypeError, match=f"`{name}` must be a str"):
        grade(completion, reference, kind=lambda c, r: True)


@pytest.mark.parametrize("function", [extract_gsm8k_answer, extract_boxed])
def test_extractors_reject_non_str(function):
    with pytest.raises(TypeError, match="`text` must be a str"):
        function(18)


@pytest.mark.parametrize(
    "reference",
    ["", "   ", "no number", "#### banana", "Janet has 3 ducks\nand 4 hens.", "#### 18\n#### ?", "9 * 2 = 18"],
)
def test_gsm8k_reference_without_answer(reference):
    with pytest.raises(ValueError, match=r"reference has no final answer: expected .*'#### <number>' or a bare number"):
        grade("#### 18", reference)


def test_reference_error_shows_the_start_of_the_reference():
    with pytest.raises(ValueError, match=re.escape(repr("x" * 80) + " (first 80 chars)")):
        grade("#### 18", "x" * 500)


@pytest.mark.parametrize("reference", ["", "  $ $ ", r"\boxed{1", r"\boxed{}", r"see \boxed{5} and \boxed{"])
def test_math_reference_without_answer(reference):
    with pytest.raises(
        ValueError, match=r"reference has no final answer: expected .*'\\boxed\{\.\.\.\}' or a bare answer"
    ):
        grade(r"\boxed{5}", reference, kind="math")


@pytest.mark.parametrize(
    ("reference", "value"),
    [("18", 18), ("$1,000", 1000), ("  -3  ", -3), ("0.5", Fraction(1, 2)), ("#### 7", 7), ("Answer: 7", 7)],
)
def test_bare_gsm8k_references(reference, value):
    assert grade(f"#### {answers._format_number(Fraction(value))}", reference) == "correct"


@pytest.mark.parametrize(
    ("value", "text"),
    [(Fraction(18), "18"), (Fraction(-1, 2), "-0.5"), (Fraction(3, 4), "0.75"), (Fraction(1, 80), "0.0125"),
     (Fraction(-2, 3), "-2/3"), (Fraction(0), "0"), (Fraction(5, 2), "2.5")],
)  # fmt: skip
def test_format_number(value, text):
    assert answers._format_number(value) == text
    assert Fraction(text) == value


# ----------------------------------------------------------------------------- robustness


ADVERSARIAL = [
    "#" * 100_000,
    "1," * 50_000,
    "#### " + "1," * 50_000,
    "#### " + "1" * 100_000,
    "#### " + " " * 100_000 + "x",
    "#### " + "-" * 100_000,
    "#### " + "$ " * 50_000,
    "The answer is " * 20_000,
    "answer: " + "9" * 100_000,
    " " * 100_000 + "x",
    "\\boxed{" * 10_000,
    "\\boxed{" * 10_000 + "}" * 9_999,
    "\\fbox{" + "{" * 100_000,
    "\\boxed{" + "\\" * 100_001,
    "\\boxed " + "x" * 100_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_are_fast_and_unparseable(text):
    assert grade(text, "#### 42") == "unparseable"
    if "\\" in text:
        result = grade(text, r"\boxed{42}", kind="math")
        assert result in ("unparseable", "wrong")


FRAGMENTS = [
    "####", "#### ", "$", ",", "0", "1", "4", "42", "7", "\\boxed{", "\\fbox{", "{", "}", "\\{",
    "The answer is", "answer:", ".", "-", "/", "%", " ", "\n", "\\frac", "\\", "**", "dollars",
]  # fmt: skip
GRAMMAR_TEXT = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), GRAMMAR_TEXT))
def test_fuzz_gsm8k_never_raises(text):
    result = grade(text, "#### 42")
    assert result in GRADES
    assert (result == "unparseable") == (extract_gsm8k_answer(text) is None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), GRAMMAR_TEXT))
@example("\\boxed{42}")
@example("\\boxed{4,2}.\\boxed{-}")
@example("\\boxed{\\frac{-}{}}")
def test_fuzz_math_never_raises(text):
    result = grade(text, r"\boxed{42}", "math")
    assert result in GRADES
    if extract_boxed(text) is None:
        assert result == "unparseable"


@settings(max_examples=150, deadline=None)
@given(GRAMMAR_TEXT)
def test_fuzz_math_fallback_never_raises(text):
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(answers, "_load_math_verify", lambda: None)
        assert grade(text, r"\boxed{42}", "math") in GRADES


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**9), 10**9), st.integers(0, 4))
def test_fuzz_gsm8k_numbers_round_trip(numerator, places):
    text = answers._format_number(Fraction(numerator, 10**places))
    assert extract_gsm8k_answer(f"#### {text}") == text
    assert grade(f"So the answer is {text}.", f"#### {text}") == "correct"
