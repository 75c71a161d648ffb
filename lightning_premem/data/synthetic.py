r"""Seeded multi-step arithmetic problems with GSM8K-style step-by-step solutions.

A small, fully controlled stand-in for GSM8K: every problem is an instance of an expression
*template* (a skill, e.g. ``"a+b*c+d"``) with random operands, and its ``solution`` is a
step-by-step trace that ends in a ``#### N`` line, exactly the format
:func:`lightning_premem.answers.grade` checks::

    {"id": 0, "question": "43+2*8+59", "solution": "2*8=16. 43+16=59. 59+59=118.\n#### 118",
     "answer": 118, "template": "a+b*c+d"}

The generator is built for studying memorization, so the *trace* of a problem is random too
(``trace_diversity``): the order of independent steps, the operand order of ``+`` and ``*``,
the separators between steps and the ``=`` spacing are drawn per example. A model that has
learnt to *solve* the problems still cannot predict those choices, so its perplexity on a
training trace stays at the trace's irreducible randomness (``trace_entropy_bits``); only a
model that has *memorized* the example reproduces it verbatim (perplexity near 1). That gap is
what makes pre-memorization accuracy measurable on this task (see ``docs/synthetic.md``).

Everything is deterministic: row ``i`` of ``generate(n, seed=s)`` depends only on
``(config, seed, start_id + i, templates)`` (and on ``exclude`` / earlier rows when those are
used), never on ``n``, and only the standard library's :class:`random.Random` is used.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from lightning_premem._checks import check_int
from lightning_premem.data.templates import DEFAULT_TEMPLATES, LETTERS, TEMPLATES, Plan, Template

__all__ = [
    "DEFAULT_TEMPLATES",
    "MAX_TRACE_DIVERSITY",
    "TEMPLATES",
    "ArithmeticTask",
    "Template",
    "parse_question",
]

_Key: TypeAlias = "tuple[str, tuple[int, ...]]"  # (template name, operands): one problem
_Style = Literal["compact", "words"]

#: The highest ``trace_diversity`` level (see :class:`ArithmeticTask`).
MAX_TRACE_DIVERSITY = 3
_STYLES = ("compact", "words")
_COMMUTATIVE = frozenset("+*")
_MAX_VALUE = 1_000_000
_MAX_ATTEMPTS = 10_000  # redraws of one row (negative answer, excluded or repeated problem)
_STREAM = "lightning_premem.synthetic/v1"  # part of every row's seed: changing it changes every stream

# Trace formatting. Index 0 of each tuple is the canonical choice (trace_diversity 0 and 1).
_STEP_SEPARATORS = (". ", " ", ", ", "; ")  # between two steps (trace_diversity >= 2)
_ENDINGS = (".", "")  # after the last step, before "\n#### N" (trace_diversity >= 2)
_EQUALS = ("=", " = ")  # inside each step (trace_diversity >= 3)
# _draw_trace draws these choices as bits: keep the option counts 4, 2 and 2.



_NAMES = (("Ann", "She"), ("Ben", "He"), ("Cara", "She"), ("Dev", "He"), ("Eva", "She"), ("Finn", "He"))
_ITEMS = ("pens", "apples", "cards", "stamps", "shells", "coins", "beads", "eggs")
_BOXES = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"))
_INT_RE = re.compile(r"[0-9]+", re.ASCII)


# ----------------------------------------------------------------------------- problems and traces


def _run(plan: Plan, values: Mapping[str, int]) -> list[tuple[int, str, int, int]]:
    """Evaluate a plan: ``(left, op, right, result)`` per step."""
    out: list[tuple[int, str, int, int]] = []
    for op, x, y in plan:
        xv = out[x][3] if isinstance(x, int) else values[x]
        yv = out[y][3] if isinstance(y, int) else values[y]
        z = xv + yv if op == "+" else xv - yv if op == "-" else xv * yv
        out.append((xv, op, yv, z))
    return out


def _values(template: Template, operands: Sequence[int]) -> dict[str, int]:
    return dict(zip(template.letters, operands, strict=True))


def _answer(template: Template, operands: Sequence[int]) -> int:
    return _run(template.plans[0], _values(template, operands))[-1][3]


def _question(template: Template, operands: Sequence[int], style: str) -> str:
    values = _values(template, operands)
    if style == "compact":
        return "".join(str(values[ch]) if ch in values else ch for ch in template.name)
    # Names and items are a function of the problem, so that question text <-> problem is one-to-one.
    h = zlib.crc32(f"{template.name}|{','.join(map(str, operands))}".encode())
    name, pron = _NAMES[h % len(_NAMES)]
    box, boxes = _BOXES[(h >> 8) % len(_BOXES)]
    boxes2 = _BOXES[((h >> 8) + 1) % len(_BOXES)][1]
    item = _ITEMS[(h >> 16) % len(_ITEMS)]
    return template.skin.format(name=name, pron=pron, item=item, box=box, boxes=boxes, boxes2=boxes2, **values)


def _contents(template: Template, operands: Sequence[int], plan: int, swaps: int) -> tuple[tuple[str, int], ...]:
    """Return the steps of one trace without formatting: ``("2*8", 16)`` per step."""
    steps = []
    for i, (xv, op, yv, z) in enumerate(_run(template.plans[plan], _values(template, operands))):
        if op in _COMMUTATIVE and (swaps >> i) & 1:
            xv, yv = yv, xv
        steps.append((f"{xv}{op}{yv}", z))
    return tuple(steps)


def _format(contents: Sequence[tuple[str, int]], seps: Sequence[str], ending: str, equals: Sequence[str]) -> str:
    parts = []
    for i, (lhs, z) in enumerate(contents):
        if i:
            parts.append(seps[i - 1])
        parts.append(f"{lhs}{equals[i]}{z}")
    return f"{''.join(parts)}{ending}\n#### {contents[-1][1]}"


def _entropy_bits(counts: Iterable[int]) -> float:
    counts = list(counts)
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts) + 0.0


def parse_question(question: str) -> tuple[str, tuple[int, ...]]:
    """Return the ``(template, operands)`` of a question this module generated (either style).

    Args:
        question: a row's ``question``.

    Returns:
        The template name and the operands in letter order.

    Raises:
        TypeError: if ``question`` is not a str.
        ValueError: if it is not a question of any template in either style.

    Example:
        >>> parse_question("43+2*8+59")
        ('a+b*c+d', (43, 2, 8, 59))
    """
    if not isinstance(question, str):
        raise TypeError(f"`question` must be a str, got {type(question).__name__}.")
    numbers = _INT_RE.findall(question)
    if len(numbers) <= len(LETTERS) and all(len(s) <= 7 for s in numbers):
        operands = tuple(int(s) for s in numbers)
        for template in TEMPLATES.values():
            if len(template.roles) == len(operands) and any(
                _question(template, operands, style) == question for style in _STYLES
            ):
                return template.name, operands
    raise ValueError(
        f"not a question of lightning_premem.data.synthetic: {question[:80]!r} (first 80 chars) matches no template "
        f"({', '.join(TEMPLATES)}) in the 'compact' or 'words' style."
    )


def _problem_key(entry: object) -> _Key:
    question = entry.get("question") if isinstance(entry, Mapping) else entry
    if not isinstance(question, str):
        raise TypeError(
            "`exclude` entries must be question strings or rows (mappings) with a 'question' str, "
            f"got {type(entry).__name__}."
        )
    return parse_question(question)


def _check_templates(name: str, templates: object) -> tuple[str, ...]:
    if isinstance(templates, str) or not isinstance(templates, Iterable):
        raise TypeError(
            f"`{name}` must be a sequence of template names such as ('a+b*c',), got {templates!r}; "
            f"known templates: {', '.join(TEMPLATES)}."
        )
    names = list(templates)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"`{name}` has unknown template(s) {unknown!r}; known templates: {', '.join(TEMPLATES)}.")
    if not names:
        raise ValueError(f"`{name}` must name at least one template, got an empty sequence.")
    return tuple(t for t in TEMPLATES if t in names)  # registry order: the set matters, not the order


# ----------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ArithmeticTask:
    r"""A generator of arithmetic problems with randomly phrased GSM8K-style solutions.

    Attributes:
        templates: the skills to draw from (names in :data:`TEMPLATES`); each row's template is
            drawn uniformly. Order and repeats do not matter (stored in registry order).
        min_operand: smallest value of an ``"n"`` operand (the additive, two-digit numbers).
        max_operand: largest value of an ``"n"`` operand.
        min_factor: smallest value of an ``"f"`` operand (the one-digit factors).
        max_factor: largest value of an ``"f"`` operand.
        style: ``"compact"``, the bare expression as the question (``"43+2*8+59"``: short
            sequences for CPU training), or ``"words"``, a one- or two-sentence word problem
            of the same template. The solution format is the same in both.
        trace_diversity: how many phrasings a solution has, drawn per row:
            ``0`` one canonical trace per problem; ``1`` adds the order of independent steps and
            the operand order of ``+`` and ``*``; ``2`` (default) also draws the separator
            between steps (``". "``, ``" "``, ``", "``, ``"; "``) and whether the last step ends
            with ``"."``; ``3`` also draws ``"="`` or ``" = "`` per step. Every phrasing is a
            correct solution. Measure it with :meth:`trace_entropy_bits`.

    Raises:
        TypeError: for a field of the wrong type.
        ValueError: for an out-of-range field, or templates that cannot have a non-negative
            answer under the operand ranges.

    Example:
        >>> task = ArithmeticTask(templates=("a+b*c+d",))
        >>> rows = task.generate(3, seed=0)
        >>> [row["question"] for row in rows]
        ['88+3*5+11', '37+5*3+23', '35+8*3+68']
        >>> print(rows[2]["solution"])
        35+68=103. 3*8=24. 24+103=127
        #### 127
        >>> rows[2]["answer"], rows[2]["template"]
        (127, 'a+b*c+d')
        >>> print(ArithmeticTask(templates=("a+b*c+d",), trace_diversity=0).generate(3, seed=0)[2]["solution"])
        8*3=24. 35+24=59. 59+68=127.
        #### 127
    """

    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    min_operand: int = 10
    max_operand: int = 99
    min_factor: int = 2
    max_factor: int = 9
    style: _Style = "compact"
    trace_diversity: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", _check_templates("templates", self.templates))
        for name in ("min_operand", "max_operand", "min_factor", "max_factor"):
            check_int(getattr(self, name), name, minimum=0, maximum=_MAX_VALUE)
        for kind in ("operand", "factor"):
            low, high = getattr(self, f"min_{kind}"), getattr(self, f"max_{kind}")
            if low > high:
                raise ValueError(f"`min_{kind}` must be <= `max_{kind}`, got min_{kind}={low} > max_{kind}={high}.")
        if self.style not in _STYLES:
            raise ValueError(f"`style` must be one of {_STYLES}, got {self.style!r}.")
        check_int(self.trace_diversity, "trace_diversity", minimum=0, maximum=MAX_TRACE_DIVERSITY)
        self._check_feasible(self.templates)

    # ------------------------------------------------------------------ generation

    def _ranges(self, template: Template) -> list[tuple[int, int]]:
        operand, factor = (self.min_operand, self.max_operand), (self.min_factor, self.max_factor)
        return [operand if role == "n" else factor for role in template.roles]

    def _check_feasible(self, names: Sequence[str]) -> None:
        for name in names:
            template = TEMPLATES[name]
            # The templates are monotone in each operand, so the best case is at a corner of the ranges.
            corners = itertools.product(*self._ranges(template))
            if not any(min(s[3] for s in _run(template.plans[0], _values(template, c))) >= 0 for c in corners):
                raise ValueError(
                    f"template {name!r} has no problem with a non-negative answer for operands in "
                    f"[{self.min_operand}, {self.max_operand}] and factors in [{self.min_factor}, {self.max_factor}]: "
                    "widen the ranges or drop the template."
                )

    def _draw_trace(self, template: Template, operands: Sequence[int], rng: random.Random) -> str:
        # Always the same draws, whatever the level: the level only masks them.
        # One getrandbits call for all the binary choices (the option counts are powers of two).
        steps = template.steps
        plan = rng.randrange(len(template.plans))
        bits = rng.getrandbits(4 * steps - 1)  # swaps: steps, separators: 2 * (steps - 1), ending: 1, equals: steps
        swaps, bits = bits & ((1 << steps) - 1), bits >> steps
        seps = [_STEP_SEPARATORS[(bits >> (2 * i)) & 3] for i in range(steps - 1)]
        bits >>= 2 * (steps - 1)
        ending = _ENDINGS[bits & 1]
        equals = [_EQUALS[(bits >> (1 + i)) & 1] for i in range(steps)]
        level = self.trace_diversity
        if level < 1:
            plan, swaps = 0, 0
        if level < 2:
            seps, ending = [_STEP_SEPARATORS[0]] * (steps - 1), _ENDINGS[0]
        if level < 3:
            equals = [_EQUALS[0]] * steps
        return _format(_contents(template, operands, plan, swaps), seps, ending, equals)

    def generate(
        self,
        n: int,
        *,
        seed: int,
        start_id: int = 0,
        templates: Sequence[str] | None = None,
        exclude: Iterable[str | Mapping[str, Any]] = (),
        unique: bool = False,
    ) -> list[dict[str, Any]]:
        r"""Generate ``n`` rows ``{"id", "question", "solution", "answer", "template"}``.

        Row ``i`` has id ``start_id + i`` and is drawn from its own :class:`random.Random`,
        seeded from ``(seed, id)``: the result is deterministic, and row ``i`` does not depend
        on ``n`` (``generate(10, seed=s)[:5] == generate(5, seed=s)``). The *problem* of a row
        (template and operands) does not depend on ``style`` or ``trace_diversity`` either.

        Args:
            n: number of rows (>= 0).
            seed: any int; different seeds give independent streams.
            start_id: id of the first row; ``generate(5, seed=s, start_id=5)`` continues
                ``generate(5, seed=s)`` (without ``unique``/``exclude``: those only look at this
                call's rows and ``exclude``).
            templates: draw only these templates (any names in :data:`TEMPLATES`) instead of
                ``self.templates``: this is how to draw more problems of some skills.
            exclude: questions (strings, either style) or rows whose problems must not be drawn,
                e.g. the training set when drawing test problems. Compared by problem (template
                and operands), so the style of the excluded rows does not matter.
            unique: also never repeat a problem within this call. Without it, small templates
                repeat problems (``"a*b+c*d"`` has only 4096 under the default ranges).

        Returns:
            The rows, a list of dicts.

        Raises:
            TypeError: for arguments of the wrong type.
            ValueError: for out-of-range arguments, unknown templates, or if ``exclude`` /
                ``unique`` leave too few distinct problems to draw from.

        Example:
            >>> task = ArithmeticTask()
            >>> train = task.generate(100, seed=0)
            >>> test = task.generate(50, seed=1, exclude=train, unique=True)
            >>> {r["question"] for r in train} & {r["question"] for r in test}
            set()
            >>> pool = task.generate(4, seed=2, templates=["a*b+c*d"])
            >>> [r["template"] for r in pool]
            ['a*b+c*d', 'a*b+c*d', 'a*b+c*d', 'a*b+c*d']
        """
        check_int(n, "n", minimum=0)
        check_int(seed, "seed")
        check_int(start_id, "start_id", minimum=0)
        if not isinstance(unique, bool):
            raise TypeError(f"`unique` must be a bool, got {type(unique).__name__}.")
        if templates is None:
            names = self.templates
        else:
            names = _check_templates("templates", templates)
            self._check_feasible(names)
        if isinstance(exclude, (str, Mapping)):
            raise TypeError("`exclude` must be an iterable of questions or rows, not a single str or mapping.")
        seen: set[_Key] = {_problem_key(entry) for entry in exclude}
        chosen = [(TEMPLATES[name], self._ranges(TEMPLATES[name])) for name in names]
        style = self.style
        rows: list[dict[str, Any]] = []
        for row_id in range(start_id, start_id + n):
            for attempt in range(_MAX_ATTEMPTS):
                rng = random.Random(f"{_STREAM}:{seed}:{row_id}:{attempt}")
                template, ranges = chosen[rng.randrange(len(chosen))]
                operands = tuple(rng.randrange(low, high + 1) for low, high in ranges)
                key = (template.name, operands)
                if key in seen:
                    continue
                steps = _run(template.plans[0], _values(template, operands))
                if min(s[3] for s in steps) >= 0:
                    break
            else:
                raise ValueError(
                    f"found no new problem for row id {row_id} in {_MAX_ATTEMPTS} draws: `exclude`, `unique` and the "
                    f"redrawn negative answers leave too few of the at most {self.num_problems(names)} distinct "
                    f"problems of templates "
                    f"{list(names)}; widen the operand ranges, add templates, or lower `n`."
                )
            if unique:
                seen.add(key)
            rows.append(
                {
                    "id": row_id,
                    "question": _question(template, operands, style),
                    "solution": self._draw_trace(template, operands, rng),
                    "answer": steps[-1][3],
                    "template": template.name,
                }
            )
        return rows

    def num_problems(self, templates: Sequence[str] | None = None) -> int:
        """Count the distinct problems (template and operands) the ranges allow.

        An upper bound for templates with a subtraction, whose negative-answer problems are
        never drawn.

        Args:
            templates: the templates to count (default: ``self.templates``).

        Returns:
            The number of operand combinations, summed over the templates.

        Example:
            >>> ArithmeticTask().num_problems(["a*b+c*d"])
            4096
        """
        names = self.templates if templates is None else _check_templates("templates", templates)
        return sum(math.prod(high - low + 1 for low, high in self._ranges(TEMPLATES[name])) for name in names)

    # ------------------------------------------------------------------ trace randomness

    def _problem_of(self, row: str | Mapping[str, Any]) -> tuple[Template, tuple[int, ...]]:
        name, operands = _problem_key(row)
        if isinstance(row, Mapping) and row.get("template", name) != name:
            raise ValueError(f"row's 'template' is {row['template']!r} but its question is one of {name!r}.")
        return TEMPLATES[name], operands

    def _content_counts(self, template: Template, operands: Sequence[int]) -> Counter[tuple[tuple[str, int], ...]]:
        """Count how many of the equally likely (plan, swaps) draws give each step sequence."""
        if self.trace_diversity < 1:
            return Counter([_contents(template, operands, 0, 0)])
        return Counter(
            _contents(template, operands, plan, swaps)
            for plan in range(len(template.plans))
            for swaps in range(2**template.steps)
        )

    def _format_choices(self, steps: int) -> tuple[list[list[str]], list[str], list[list[str]]]:
        """Return all separator, ending and equals choices at this level (each equally likely)."""
        level = self.trace_diversity
        seps = _STEP_SEPARATORS if level >= 2 else _STEP_SEPARATORS[:1]
        endings = _ENDINGS if level >= 2 else _ENDINGS[:1]
        equals = _EQUALS if level >= 3 else _EQUALS[:1]
        return (
            [list(p) for p in itertools.product(seps, repeat=steps - 1)],
            list(endings),
            [list(p) for p in itertools.product(equals, repeat=steps)],
        )

    def trace_distribution(self, row: str | Mapping[str, Any]) -> dict[str, float]:
        r"""Return every solution text the generator can give a problem, with its probability.

        Enumerates all draws, so it is exact but grows with the level: up to 131072 traces for
        the 4-step template at ``trace_diversity=3``. :meth:`count_traces` and
        :meth:`trace_entropy_bits` are fast.

        Args:
            row: a generated row, or its question.

        Returns:
            ``{solution: probability}``; the probabilities sum to 1.

        Example:
            >>> task = ArithmeticTask(trace_diversity=1)
            >>> for trace, p in sorted(task.trace_distribution("43+2*8").items()):
            ...     print(repr(trace), p)
            '2*8=16. 16+43=59.\n#### 59' 0.25
            '2*8=16. 43+16=59.\n#### 59' 0.25
            '8*2=16. 16+43=59.\n#### 59' 0.25
            '8*2=16. 43+16=59.\n#### 59' 0.25
        """
        template, operands = self._problem_of(row)
        contents = self._content_counts(template, operands)
        seps, endings, equals = self._format_choices(template.steps)
        total = contents.total() * len(seps) * len(endings) * len(equals)
        out: dict[str, float] = {}
        for content, count in contents.items():
            for sep, ending, eq in itertools.product(seps, endings, equals):
                text = _format(content, sep, ending, eq)
                out[text] = out.get(text, 0.0) + count / total
        return out

    def count_traces(self, row: str | Mapping[str, Any]) -> int:
        """Return the number of distinct solution texts the generator can give a problem.

        Args:
            row: a generated row, or its question.

        Returns:
            1 at ``trace_diversity=0``; more above (fewer when operands repeat, e.g. ``3*3``).

        Example:
            >>> ArithmeticTask(trace_diversity=0).count_traces("43+2*8+17")
            1
            >>> ArithmeticTask().count_traces("43+2*8+17")
            1024
        """
        template, operands = self._problem_of(row)
        seps, endings, equals = self._format_choices(template.steps)
        return len(self._content_counts(template, operands)) * len(seps) * len(endings) * len(equals)

    def trace_entropy_bits(self, row: str | Mapping[str, Any]) -> float:
        """Return the Shannon entropy (bits) of a problem's solution text under this config.

        This is the randomness a model that solves the problem perfectly still cannot predict:
        its best possible total log-loss on the trace, in bits. Only memorizing the example
        brings the trace's perplexity below ``2 ** (bits / len(tokens))``.

        Args:
            row: a generated row, or its question.

        Returns:
            0.0 at ``trace_diversity=0``; ``log2(count_traces(row))`` when every trace is
            equally likely.

        Example:
            >>> ArithmeticTask().trace_entropy_bits("43+2*8+17")
            10.0
            >>> ArithmeticTask(trace_diversity=3).trace_entropy_bits("43+2*8+17")
            13.0
        """
        template, operands = self._problem_of(row)
        seps, endings, equals = self._format_choices(template.steps)
        # Formatting choices are always recoverable from the text, so their bits simply add.
        bits = _entropy_bits(self._content_counts(template, operands).values())
        return bits + math.log2(len(seps) * len(endings) * len(equals))

    def mean_trace_entropy_bits(self, n: int = 1000, *, seed: int = 0, templates: Sequence[str] | None = None) -> float:
        """Return the mean of :meth:`trace_entropy_bits` over ``n`` generated problems.

        Args:
            n: number of problems to average over (>= 1).
            seed: seed of the problems.
            templates: restrict to these templates (default: ``self.templates``).

        Returns:
            The mean entropy in bits.

        Example:
            >>> round(ArithmeticTask(templates=["a+b*c+d"]).mean_trace_entropy_bits(200), 2)
            9.88
        """
        check_int(n, "n", minimum=1)
        rows = self.generate(n, seed=seed, templates=templates)
        return sum(self.trace_entropy_bits(row) for row in rows) / n
