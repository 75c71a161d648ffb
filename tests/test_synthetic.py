import dataclasses
import itertools
import math
import re
import string
import time
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_premem.answers import extract_gsm8k_answer, grade
from lightning_premem.data.synthetic import (
    MAX_TRACE_DIVERSITY,
    TEMPLATES,
    ArithmeticTask,
    parse_question,
)

STEP_RE = re.compile(r"(\d+)([+*-])(\d+)(?:=| = )(\d+)")
SEPARATOR_RE = re.compile(r"(?:\. | |, |; )")
ALPHABET = set(string.ascii_letters + string.digits + string.punctuation + " \n")  # tokenization.DEFAULT_ALPHABET
ALL_TEMPLATES = tuple(TEMPLATES)


def _expression_value(template: str, operands: tuple[int, ...]) -> int:
    expr = "".join(str(operands["abcde".index(ch)]) if ch in "abcde" else ch for ch in template)
    return int(eval(expr))  # digits, + - * and parentheses only


def _check_row(row: dict) -> None:
    """The row is well formed and its trace is a correct step-by-step solution."""
    assert set(row) == {"id", "question", "solution", "answer", "template"}
    assert isinstance(row["id"], int) and isinstance(row["answer"], int)
    template, operands = parse_question(row["question"])
    assert template == row["template"]
    answer = _expression_value(template, operands)
    assert row["answer"] == answer >= 0
    body, final = row["solution"].rsplit("\n", 1)
    assert final == f"#### {answer}"
    assert extract_gsm8k_answer(row["solution"]) == str(answer)
    assert grade(row["solution"], row["solution"], "gsm8k") == "correct"
    assert grade(row["solution"], str(answer), "gsm8k") == "correct"
    body = body.removesuffix(".")
    steps = list(STEP_RE.finditer(body))
    assert len(steps) == TEMPLATES[template].steps
    # Nothing but separators between the steps.
    gaps = [body[a.end() : b.start()] for a, b in itertools.pairwise(steps)]
    assert steps[0].start() == 0 and steps[-1].end() == len(body)
    assert all(SEPARATOR_RE.fullmatch(gap) for gap in gaps), gaps
    available = Counter(operands)
    for step in steps:
        x, op, y, z = int(step[1]), step[2], int(step[3]), int(step[4])
        assert z == (x + y if op == "+" else x - y if op == "-" else x * y), step[0]
        # Each step uses question operands or earlier results, each at most once.
        for value in (x, y):
            assert available[value] > 0, (row, step[0])
            available[value] -= 1
        available[z] += 1
    assert int(steps[-1][4]) == answer
    assert set(row["question"] + row["solution"]) <= ALPHABET


# ----------------------------------------------------------------------------- determinism


def test_deterministic_and_prefix_stable() -> None:
    task = ArithmeticTask()
    rows = task.generate(50, seed=7)
    assert rows == task.generate(50, seed=7)
    assert task.generate(20, seed=7) == rows[:20]
    assert task.generate(30, seed=7, start_id=20) == rows[20:]
    assert [row["id"] for row in rows] == list(range(50))
    assert task.generate(50, seed=8) != rows
    assert task.generate(0, seed=7) == []
    # The same holds with `unique` and `exclude` (row i only depends on rows before it).
    excluded = task.generate(30, seed=1)
    full = task.generate(40, seed=7, unique=True, exclude=excluded)
    assert task.generate(25, seed=7, unique=True, exclude=excluded) == full[:25]


def test_stream_is_fixed() -> None:
    # Changing this breaks reproducibility of every dataset made with the module: bump _STREAM on purpose only.
    rows = ArithmeticTask().generate(3, seed=0)
    assert [row["question"] for row in rows] == ["88+3*5+11", "5*5+3*3", "35-8*3"]
    assert rows[0]["solution"] == "3*5=15. 15+11=26, 26+88=114\n#### 114"


def test_problem_independent_of_style_and_diversity() -> None:
    keys = None
    for style in ("compact", "words"):
        for level in range(MAX_TRACE_DIVERSITY + 1):
            rows = ArithmeticTask(style=style, trace_diversity=level).generate(40, seed=3)
            row_keys = [(parse_question(r["question"]), r["answer"]) for r in rows]
            keys = row_keys if keys is None else keys
            assert row_keys == keys


def test_templates_order_does_not_matter() -> None:
    a = ArithmeticTask(templates=["a*b+c*d", "a+b*c", "a+b*c"])
    b = ArithmeticTask(templates=("a+b*c", "a*b+c*d"))
    assert a == b and a.templates == ("a+b*c", "a*b+c*d")
    assert a.generate(20, seed=0) == b.generate(20, seed=0)
    task = ArithmeticTask()
    assert task.generate(20, seed=0, templates=["a*b+c*d", "a+b*c"]) == b.generate(20, seed=0)
    hash(a)  # frozen and hashable


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("style", ["compact", "words"])
@pytest.mark.parametrize("level", range(MAX_TRACE_DIVERSITY + 1))
def test_every_template_trace_is_correct(style: str, level: int) -> None:
    task = ArithmeticTask(templates=ALL_TEMPLATES, style=style, trace_diversity=level)
    rows = task.generate(400, seed=level)
    assert {row["template"] for row in rows} == set(ALL_TEMPLATES)
    for row in rows:
        _check_row(row)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(-(2**70), 2**70),
    templates=st.lists(st.sampled_from(ALL_TEMPLATES), min_size=1, max_size=4),
    style=st.sampled_from(["compact", "words"]),
    level=st.integers(0, MAX_TRACE_DIVERSITY),
    operand=st.tuples(st.integers(0, 300), st.integers(0, 300)).map(sorted),
    factor=st.tuples(st.integers(0, 30), st.integers(0, 30)).map(sorted),
)
def test_traces_correct_for_any_config(
    seed: int, templates: list[str], style: str, level: int, operand: list[int], factor: list[int]
) -> None:
    try:
        task = ArithmeticTask(
            templates=templates,
            min_operand=operand[0],
            max_operand=operand[1],
            min_factor=factor[0],
            max_factor=factor[1],
            style=style,  # type: ignore[arg-type]
            trace_diversity=level,
        )
    except ValueError as err:  # a subtraction template that cannot be non-negative under these ranges
        assert "non-negative" in str(err)
        return
    rows = task.generate(20, seed=seed)
    for row in rows:
        _check_row(row)
        template, operands = parse_question(row["question"])
        ranges = {"n": operand, "f": factor}
        for role, value in zip(TEMPLATES[template].roles, operands, strict=True):
            assert ranges[role][0] <= value <= ranges[role][1]
        if task.count_traces(row) <= 4096:  # the full enumeration is slow for 4 steps at level 3
            assert row["solution"] in task.trace_distribution(row)


def test_all_plans_agree() -> None:
    for template in TEMPLATES.values():
        assert len(template.letters) == len(template.roles) == len(set(re.findall("[a-e]", template.name)))
        assert all(len(plan) == template.steps for plan in template.plans)
    task = ArithmeticTask(templates=ALL_TEMPLATES, trace_diversity=1)
    for row in task.generate(200, seed=0):
        # Every evaluation order and operand order reaches the same answer, through correct steps.
        dist = task.trace_distribution(row)
        for trace in dist:
            _check_row({**row, "solution": trace})


def test_answers_non_negative_and_infeasible_ranges() -> None:
    rows = ArithmeticTask(templates=["a-b*c", "a*b-c"]).generate(2000, seed=0)
    assert min(row["answer"] for row in rows) >= 0
    with pytest.raises(ValueError, match=r"'a-b\*c'.*non-negative"):
        ArithmeticTask(templates=["a-b*c"], max_operand=20, min_operand=10, min_factor=5)
    with pytest.raises(ValueError, match="non-negative"):
        ArithmeticTask(max_operand=20, min_factor=5, templates=["a+b*c"]).generate(1, seed=0, templates=["a-b*c"])


# ----------------------------------------------------------------------------- trace diversity


def test_diversity_zero_is_one_canonical_trace() -> None:
    task = ArithmeticTask(templates=["a*b+c*d"], min_factor=2, max_factor=3, trace_diversity=0)  # 16 problems
    by_question = defaultdict(set)
    for row in task.generate(300, seed=0):
        by_question[row["question"]].add(row["solution"])
        assert task.count_traces(row) == 1
        assert task.trace_entropy_bits(row) == 0.0
        assert task.trace_distribution(row) == {row["solution"]: 1.0}
    assert len(by_question) == 16
    assert all(len(solutions) == 1 for solutions in by_question.values())
    assert by_question["2*3+3*2"] == {"2*3=6. 3*2=6. 6+6=12.\n#### 12"}


def test_default_diversity_gives_many_traces_per_problem() -> None:
    task = ArithmeticTask(templates=["a*b+c*d"], min_factor=2, max_factor=3)
    by_question = defaultdict(list)
    for row in task.generate(800, seed=0):
        by_question[row["question"]].append(row["solution"])
    for question, solutions in by_question.items():
        assert len(set(solutions)) >= min(10, len(solutions) // 2), question
        assert set(solutions) <= set(task.trace_distribution(question))
    assert task.count_traces("2*3+3*2") > 1


def test_repeated_draws_follow_the_distribution() -> None:
    # A single problem, "(43+3)*3": at level 1, four equally likely traces (operand orders of both steps).
    task = ArithmeticTask(
        templates=["(a+b)*c"], min_operand=43, max_operand=43, min_factor=3, max_factor=3, trace_diversity=1
    )
    rows = task.generate(4000, seed=0)
    assert {row["question"] for row in rows} == {"(43+3)*3"}
    dist = task.trace_distribution(rows[0])
    assert sorted(dist) == sorted(
        f"{s1}. {s2}.\n#### 138" for s1 in ("43+3=46", "3+43=46") for s2 in ("46*3=138", "3*46=138")
    )
    counts = Counter(row["solution"] for row in rows)
    assert set(counts) == set(dist)
    assert all(abs(c / len(rows) - 0.25) < 0.03 for c in counts.values()), counts


@pytest.mark.parametrize("level", range(MAX_TRACE_DIVERSITY + 1))
def test_entropy_matches_enumeration(level: int) -> None:
    templates = [t for t in ALL_TEMPLATES if level < 3 or TEMPLATES[t].steps < 4]  # keep enumeration small
    task = ArithmeticTask(templates=templates, min_factor=2, max_factor=4, trace_diversity=level)
    for row in task.generate(40, seed=level):
        dist = task.trace_distribution(row)
        assert math.isclose(sum(dist.values()), 1.0)
        assert task.count_traces(row) == len(dist)
        entropy = -sum(p * math.log2(p) for p in dist.values())
        assert math.isclose(task.trace_entropy_bits(row), entropy, abs_tol=1e-9)
        assert row["solution"] in dist
        if level == 0:
            assert len(dist) == 1


def test_entropy_values() -> None:
    # a+b*c+d with distinct values: 4 orders x 2^3 operand orders x 4^2 separators x 2 endings (x 2^3 "=" spacings).
    assert ArithmeticTask(trace_diversity=1).trace_entropy_bits("43+2*8+17") == 5.0
    assert ArithmeticTask().trace_entropy_bits("43+2*8+17") == 10.0
    assert ArithmeticTask(trace_diversity=3).trace_entropy_bits("43+2*8+17") == 13.0
    assert ArithmeticTask().count_traces("43+2*8+17") == 1024
    # Repeated values collapse some phrasings.
    assert ArithmeticTask().count_traces("43+2*2+17") < 1024
    means = [ArithmeticTask(trace_diversity=level).mean_trace_entropy_bits(300) for level in range(4)]
    assert means[0] == 0.0 and means == sorted(means)
    assert 6.0 < means[2] < 8.0  # the default (documented in docs/synthetic.md)
    # The question may be given as a row of either style.
    words = ArithmeticTask(style="words").generate(5, seed=0)
    compact = ArithmeticTask().generate(5, seed=0)
    for w, c in zip(words, compact, strict=True):
        assert ArithmeticTask().trace_distribution(w) == ArithmeticTask().trace_distribution(c)


# ----------------------------------------------------------------------------- pools and disjointness


def test_templates_restriction() -> None:
    task = ArithmeticTask()
    for name in ALL_TEMPLATES:
        rows = task.generate(30, seed=1, templates=[name])
        assert {row["template"] for row in rows} == {name}
    rows = task.generate(300, seed=1, templates=["a+b*c", "a*b*c"])
    assert {row["template"] for row in rows} == {"a+b*c", "a*b*c"}
    # By difficulty: all 3-step skills.
    three = [t.name for t in TEMPLATES.values() if t.steps == 3]
    assert set(three) == {"a+b*c+d", "a*b+c*d"}
    assert {row["template"] for row in task.generate(50, seed=0, templates=three)} == set(three)


def test_exclude_and_unique() -> None:
    task = ArithmeticTask()
    train = task.generate(2000, seed=0)
    test = task.generate(2000, seed=1, exclude=train, unique=True)
    train_q = {row["question"] for row in train}
    test_q = [row["question"] for row in test]
    assert not train_q & set(test_q)
    assert len(set(test_q)) == len(test_q)
    # Without exclusion, small templates do repeat problems across and within sets.
    plain = task.generate(2000, seed=1)
    assert train_q & {row["question"] for row in plain}
    # Exclusion is by problem: question strings and rows of the other style work too.
    words = ArithmeticTask(style="words")
    words_test = words.generate(500, seed=1, exclude=[row["question"] for row in train])
    assert not {parse_question(r["question"]) for r in words_test} & {parse_question(q) for q in train_q}
    compact_test = task.generate(500, seed=1, exclude=words.generate(2000, seed=0))
    assert not {r["question"] for r in compact_test} & train_q


def test_pool_exhaustion_and_bad_exclude() -> None:
    task = ArithmeticTask(templates=["a*b+c*d"], min_factor=2, max_factor=3)
    assert task.num_problems() == 16
    assert len({row["question"] for row in task.generate(16, seed=0, unique=True)}) == 16
    with pytest.raises(ValueError, match=r"no new problem for row id 16.*at most 16 distinct"):
        task.generate(17, seed=0, unique=True)
    with pytest.raises(ValueError, match=r"not a question of lightning_premem\.data\.synthetic"):
        task.generate(1, seed=0, exclude=["What is 2+2?"])
    with pytest.raises(TypeError, match="`exclude` must be an iterable"):
        task.generate(1, seed=0, exclude="2*3+3*2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'question' str"):
        task.generate(1, seed=0, exclude=[{"prompt": "2*3+3*2"}])
    assert ArithmeticTask().num_problems() == 90 * 64 * 2 + 90 * 64 * 90 + 8**4


# ----------------------------------------------------------------------------- questions, styles, lengths


def test_parse_question() -> None:
    for style in ("compact", "words"):
        for row in ArithmeticTask(templates=ALL_TEMPLATES, style=style).generate(300, seed=0):
            template, operands = parse_question(row["question"])
            assert template == row["template"]
            assert [int(s) for s in re.findall(r"\d+", row["question"])] == list(operands)
    assert parse_question("(43+5)*7") == ("(a+b)*c", (43, 5, 7))
    for bad in ("43+5", "43+2*8+", "4.5+2*3", "043+2*8", ""):
        with pytest.raises(ValueError, match="matches no template"):
            parse_question(bad)
    with pytest.raises(TypeError):
        parse_question(42)  # type: ignore[arg-type]


def test_words_style_examples() -> None:
    rows = ArithmeticTask(templates=ALL_TEMPLATES, style="words").generate(200, seed=0)
    for row in rows:
        assert row["question"].endswith("?") and "{" not in row["question"]
    # The same problem always gets the same words (so exclusion by question text is exact).
    again = ArithmeticTask(templates=ALL_TEMPLATES, style="words").generate(200, seed=0, start_id=0)
    assert [r["question"] for r in again] == [r["question"] for r in rows]


def test_compact_lengths() -> None:
    for level in range(MAX_TRACE_DIVERSITY + 1):
        task = ArithmeticTask(trace_diversity=level)
        rows = task.generate(3000, seed=level)
        lengths = [len(row["question"]) + len(row["solution"]) for row in rows]
        assert max(lengths) <= 60, level
        assert sum(lengths) / len(lengths) < 45
    # The longest default problems, all operands at their maximum.
    worst = ArithmeticTask(min_operand=99, min_factor=9, trace_diversity=MAX_TRACE_DIVERSITY)
    assert max(len(r["question"]) + len(r["solution"]) for r in worst.generate(500, seed=0)) <= 60


def test_fast() -> None:
    start = time.perf_counter()
    rows = ArithmeticTask().generate(20_000, seed=0)
    assert len(rows) == 20_000
    assert time.perf_counter() - start < 3.0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"templates": ()}, ValueError, "at least one template"),
        ({"templates": "a+b*c"}, TypeError, r"`templates` must be a sequence of template names"),
        ({"templates": ["a+b"]}, ValueError, r"unknown template\(s\) \['a\+b'\]; known templates: a\+b\*c"),
        ({"min_operand": -1}, ValueError, r"`min_operand` must be an int in \[0, 1000000\], got -1"),
        ({"max_factor": 2.5}, TypeError, r"`max_factor` must be an int in \[0, 1000000\], got float"),
        ({"min_factor": True}, TypeError, r"`min_factor` must be an int in \[0, 1000000\], got bool"),
        ({"min_operand": 50, "max_operand": 40}, ValueError, r"`min_operand` must be <= `max_operand`.*50 > .*40"),
        ({"style": "verbose"}, ValueError, r"`style` must be one of \('compact', 'words'\), got 'verbose'"),
        ({"trace_diversity": 4}, ValueError, r"`trace_diversity` must be an int in \[0, 3\], got 4"),
        ({"trace_diversity": 1.0}, TypeError, r"`trace_diversity` must be an int"),
    ],
)
def test_config_validation(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ArithmeticTask(**kwargs)


def test_generate_validation() -> None:
    task = ArithmeticTask()
    with pytest.raises(ValueError, match=r"`n` must be an int >= 0, got -1"):
        task.generate(-1, seed=0)
    with pytest.raises(TypeError, match=r"`seed` must be an int, got str"):
        task.generate(1, seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`start_id` must be an int >= 0"):
        task.generate(1, seed=0, start_id=-5)
    with pytest.raises(ValueError, match="unknown template"):
        task.generate(1, seed=0, templates=["a/b"])
    with pytest.raises(TypeError, match="`unique` must be a bool"):
        task.generate(1, seed=0, unique=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="its question is one of 'a\\+b\\*c'"):
        task.trace_entropy_bits({"question": "43+2*8", "template": "a*b-c"})
    with pytest.raises(ValueError, match="`n` must be an int >= 1"):
        task.mean_trace_entropy_bits(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.style = "words"  # type: ignore[misc]
