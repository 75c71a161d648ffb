r"""Answer checking: grade a sampled completion's final answer against a reference.

Pre-memorization accuracy counts the sampled completions whose *final answer* matches the
reference. :func:`grade` decides that for one completion and returns ``"correct"``,
``"wrong"`` or ``"unparseable"``:

- ``kind="gsm8k"``: the final answer is the number after the last ``####`` (the format the
  model is trained on), else after the last "The answer is" / "Answer:" phrase. Numbers are
  compared exactly (``18.00 == 18``, ``1,000 == 1000``, ``3/4 == 0.75``).
- ``kind="math"``: the final answer is the content of the last ``\boxed{...}`` (or
  ``\fbox{...}``); equivalence is decided by the optional ``math-verify`` package, with a
  normalising string comparison as the fallback when it is not installed.
- ``kind`` may also be a callable ``(completion, reference) -> bool | None``.

A completion without a recognisable final answer is ``"unparseable"``: it is never graded on
some other number found in the text (see ``docs/answers.md`` for the policy and why).
"""

from __future__ import annotations

import functools
import importlib
import re
import threading
import warnings
from collections.abc import Callable
from fractions import Fraction
from types import ModuleType
from typing import Any, Literal

__all__ = ["extract_boxed", "extract_gsm8k_answer", "grade"]

_Grade = Literal["correct", "wrong", "unparseable"]
_Kind = Literal["gsm8k", "math"] | Callable[[str, str], Any]

#: Numbers with more digits than this are not taken as answers (keeps ``int()`` cheap and
#: independent of ``sys.set_int_max_str_digits``).
_MAX_NUMBER_CHARS = 100

# ----------------------------------------------------------------------------- GSM8K

# A number at the start of an answer slot. Every quantifier is either bounded or followed by
# nothing that could match the same characters, so matching is linear in the input length.
_NUMBER_RE = re.compile(
    r"(?P<sign>[-+\u2212])?[ ]?(?:\\?\$|[\u20ac\u00a3])?[ ]?"
    r"(?P<num>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:[ ]?/[ ]?(?P<den>[0-9]+))?",
    re.ASCII,
)
# "The answer is", "the final answer is:", "Answer:", "**Answer:**", ...
_PHRASE_RE = re.compile(r"\banswer[*_ \t]{0,3}(?:is\b[ \t]{0,3}:?|:)", re.IGNORECASE | re.ASCII)
_DIGIT_RE = re.compile(r"[0-9]")
_SENTENCE_END_RE = re.compile(r"[.;!?](?:\s|$)")
# Characters skipped before the number: spaces, markdown emphasis / code, a currency dollar.
_SLOT_LEADING = " \t*_`$"
# After the number, the slot may hold units and words, but nothing that continues an expression.
_CONTINUATION = ("/", "^", "_")


def _parse_number_slot(slot: str) -> Fraction | None:
    """Parse the number at the start of an answer slot (one line of text), or ``None``."""
    slot = slot.lstrip(_SLOT_LEADING)
    if slot.startswith("\\boxed{"):
        slot = slot[len("\\boxed{") :].lstrip(_SLOT_LEADING)
    match = _NUMBER_RE.match(slot)
    if match is None:
        return None
    rest = slot[match.end() :]
    sentence_end = _SENTENCE_END_RE.search(rest)
    if sentence_end is not None:  # "18. Next, 2 more apples": only this sentence counts
        rest = rest[: sentence_end.start()]
    # "3 + 4 = 7", "1,23", "10^6", "5/x": ambiguous, so not an answer.
    if _DIGIT_RE.search(rest) is not None or rest.lstrip().startswith(_CONTINUATION):
        return None
    num, den = match["num"], match["den"]
    if len(num) + len(den or "") > _MAX_NUMBER_CHARS:
        return None
    try:
        value = Fraction(num.replace(",", ""))
        if den is not None:
            value /= int(den)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match["sign"] in ("-", "\u2212") else value


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _gsm8k_value(text: str) -> Fraction | None:
    """Return the final answer of a GSM8K-style text as an exact number, or ``None``."""
    marker = text.rfind("####")
    if marker >= 0:
        start = marker + len("####")
        # "####" is the trained answer marker: skip any whitespace (also a line break) after it.
        stripped = text[start:].lstrip()
        return _parse_number_slot(_line_at(stripped, 0))
    last = None
    for last in _PHRASE_RE.finditer(text):  # noqa: B007 - only the last phrase counts
        pass
    if last is None:
        return None
    return _parse_number_slot(_line_at(text, last.end()))


def _format_number(value: Fraction) -> str:
    """Canonical string of an exact number: ``18``, ``-0.5``, ``0.75``; ``1/3`` if not a finite decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    return f"{'-' if value < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def extract_gsm8k_answer(text: str) -> str | None:
    r"""Extract the final numeric answer of a GSM8K-style text, normalised.

    The answer is the number after the last ``####`` (also ``####18``). Only when the text has
    no ``####`` at all, it is the number after the last "The answer is" / "the final answer
    is" / "Answer:" phrase. The number may carry a sign, ``$``, thousands commas, decimals,
    a percent sign, a simple fraction (``3/4``) and trailing unit words (``18 dollars.``). If
    the answer slot holds anything else (``#### banana``, ``#### 3 + 4 = 7``), or there is no
    slot, the result is ``None``: there is no fallback to "the last number in the text".

    Args:
        text: a completion or a reference solution.

    Returns:
        The number as a canonical string (``"1000"``, ``"-0.5"``, ``"1/3"``), or ``None``.

    Example:
        >>> extract_gsm8k_answer("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18")
        '18'
        >>> extract_gsm8k_answer("So the answer is $1,234.50 dollars.")
        '1234.5'
        >>> extract_gsm8k_answer("#### 3/4")
        '0.75'
        >>> extract_gsm8k_answer("9 * 2 = 18") is None
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
    value = _gsm8k_value(text)
    return None if value is None else _format_number(value)


@functools.lru_cache(maxsize=4096)
def _gsm8k_reference_value(reference: str) -> Fraction:
    value = _gsm8k_value(reference)
    if value is None:
        value = _parse_number_slot(reference.strip()) if "\n" not in reference.strip() else None
    if value is None:
        raise ValueError(
            "reference has no final answer: expected a solution ending in '#### <number>' or a bare "
            f"number, got {reference[:80]!r} (first 80 chars)."
        )
    return value


def _grade_gsm8k(completion: str, reference: str) -> _Grade:
    expected = _gsm8k_reference_value(reference)
    value = _gsm8k_value(completion)
    if value is None:
        return "unparseable"
    return "correct" if value == expected else "wrong"


# ----------------------------------------------------------------------------- MATH

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``.

    Braces nest (``\boxed{\frac{1}{2}}``); escaped braces ``\{``, ``\}`` do not count. The
    brace-less form ``\boxed 5`` gives the following token. Only the *last* box counts: if it
    is unbalanced or empty, the result is ``None`` even when an earlier box is complete.

    Args:
        text: a completion or a reference solution.

    Returns:
        The box content, stripped, or ``None`` if there is no complete, non-empty last box.

    Example:
        >>> extract_boxed(r"so $x = \boxed{\frac{1}{2}}$.")
        '\\frac{1}{2}'
        >>> extract_boxed(r"\boxed{1} or rather \boxed{2}")
        '2'
        >>> extract_boxed(r"\boxed{\frac{1}{2}") is None
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
    start, command = max((text.rfind(cmd), cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    pos = start + len(command)
    after = text[pos : pos + 1]
    if after.isalpha():  # e.g. "\boxedsymbol": a different command
        return None
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] != "{":
        if after not in (" ", "\t"):
            return None
        # "\boxed 5": the token up to the next whitespace or "$"
        end = pos
        while end < len(text) and not text[end].isspace() and text[end] != "$":
            end += 1
        return text[pos:end] or None
    depth, i = 0, pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # "\{", "\}", "\\": never a grouping brace
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                content = text[pos + 1 : i].strip()
                return content or None
        i += 1
    return None


def _math_reference_answer(reference: str) -> str:
    if any(cmd in reference for cmd in _BOX_COMMANDS):
        answer = extract_boxed(reference)
    else:
        answer = reference.strip().strip("$").strip() or None
    if answer is None:
        raise ValueError(
            "reference has no final answer: expected a solution with a complete '\\boxed{...}' or a bare "
            f"answer, got {reference[:80]!r} (first 80 chars)."
        )
    return answer


# --- fallback: normalising string comparison

_FALLBACK_WARNED = False
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SPACING_RE = re.compile(r"\\[!,;: ]")
_DISPLAY_FRAC_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREE_RE = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![A-Za-z]))")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm)\s*\{[^{}]*\}\s*$")
_FRAC_SHORT_RE = re.compile(r"\\frac([0-9])([0-9])")
_SQRT_SHORT_RE = re.compile(r"\\sqrt([0-9A-Za-z])")
_ASSIGNMENT_RE = re.compile(r"[A-Za-z](?:_\{?[0-9A-Za-z]{1,8}\}?)?=")
_WHITESPACE_RE = re.compile(r"\s+")
_PLAIN_NUMBER_RE = re.compile(
    r"(?P<sign>-?)(?P<num>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:/(?P<den>[0-9]+))?",
    re.ASCII,
)
_PLAIN_FRAC_RE = re.compile(r"(?P<sign>-?)\\frac\{(?P<num>[0-9]+)\}\{(?P<den>[0-9]+)\}", re.ASCII)


def _normalize_latex(answer: str) -> str:
    """Normalise a LaTeX answer for the string-comparison fallback."""
    s = answer.replace("\\$", "").replace("$", "")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _SPACING_RE.sub("", s)
    s = _DISPLAY_FRAC_RE.sub(r"\\frac", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("{,}", "")
    without_unit = _TRAILING_TEXT_RE.sub("", s)
    if without_unit.strip():  # "5\text{ cm}" -> "5", but "\text{(A)}" stays "(A)"
        s = without_unit
    s = _TEXT_RE.sub(r"\1", s)
    s = _WHITESPACE_RE.sub("", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    assignment = _ASSIGNMENT_RE.match(s)
    if assignment is not None and len(s) > assignment.end():
        s = s[assignment.end() :]
    return s


def _plain_number(s: str) -> Fraction | None:
    match = _PLAIN_NUMBER_RE.fullmatch(s) or _PLAIN_FRAC_RE.fullmatch(s)
    if match is None or len(s) > _MAX_NUMBER_CHARS:
        return None
    try:
        value = Fraction(match["num"].replace(",", ""))
        if match["den"] is not None:
            value /= int(match["den"])
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match["sign"] else value


def _fallback_equal(answer: str, reference_answer: str) -> bool | None:
    """Normalising string comparison; ``None`` if the answer normalises to nothing."""
    got, expected = _normalize_latex(answer), _normalize_latex(reference_answer)
    if not got:
        return None
    got_number, expected_number = _plain_number(got), _plain_number(expected)
    if got_number is not None and expected_number is not None:
        return got_number == expected_number
    return got == expected


def _warn_fallback_once() -> None:
    global _FALLBACK_WARNED
    if not _FALLBACK_WARNED:
        _FALLBACK_WARNED = True
        warnings.warn(
            "math-verify is not installed: MATH answers are compared with a normalising string comparison "
            "(e.g. '\\frac{1}{2}' == '0.5', but 'x+1' != '1+x'). Install it with "
            "`pip install 'lightning-premem[math]'` for symbolic equivalence.",
            UserWarning,
            stacklevel=5,
        )


# --- math-verify


@functools.cache
def _import_math_verify() -> ModuleType | None:
    try:
        return importlib.import_module("math_verify")
    except ImportError:
        return None


def _load_math_verify() -> ModuleType | None:
    """Return the ``math_verify`` module, or ``None`` if it is not installed (imported lazily, once)."""
    return _import_math_verify()


#: Answers longer or deeper than this skip math-verify (sympy can take its whole timeout on them,
#: and without a timeout, in a non-main thread, much longer); real answers are far smaller.
_MATH_VERIFY_MAX_CHARS = 512
_MATH_VERIFY_MAX_DEPTH = 12


def _too_complex(answer: str) -> bool:
    if len(answer) > _MATH_VERIFY_MAX_CHARS:
        return True
    depth = 0
    for char in answer:
        if char in "{([":
            depth += 1
            if depth > _MATH_VERIFY_MAX_DEPTH:
                return True
        elif char in "})]":
            depth -= 1
    return False


def _math_verify_timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread; elsewhere
    # it would raise, so run without its timeout there.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.cache
def _math_verify_errors() -> tuple[type[BaseException], ...]:
    # math-verify's TimeoutException derives from BaseException, so `except Exception` misses it.
    try:
        errors = importlib.import_module("math_verify.errors")
    except ImportError:
        return (Exception,)
    timeout_error = getattr(errors, "TimeoutException", None)
    if isinstance(timeout_error, type) and issubclass(timeout_error, BaseException):
        return (Exception, timeout_error)
    return (Exception,)


@functools.lru_cache(maxsize=4096)
def _math_verify_parse_reference(answer: str, timeout: int | None) -> tuple[Any, ...]:
    math_verify = _load_math_verify()
    if math_verify is None:  # pragma: no cover - only called when it is installed
        return ()
    return tuple(math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout))


def _math_equal(answer: str, reference_answer: str) -> bool | None:
    math_verify = _load_math_verify()
    if math_verify is None:
        _warn_fallback_once()
        return _fallback_equal(answer, reference_answer)
    if _too_complex(answer) or _too_complex(reference_answer):
        return _fallback_equal(answer, reference_answer)
    timeout = _math_verify_timeout()
    try:
        gold = _math_verify_parse_reference(reference_answer, timeout)
        target = math_verify.parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
        if gold and target:
            return bool(math_verify.verify(list(gold), target, timeout_seconds=timeout))
    except _math_verify_errors():  # grade() must not raise on arbitrary completions
        pass
    # math-verify could not read one side (or failed): compare normalised strings instead.
    return _fallback_equal(answer, reference_answer)


def _grade_math(completion: str, reference: str) -> _Grade:
    reference_answer = _math_reference_answer(reference)
    answer = extract_boxed(completion)
    if answer is None:
        return "unparseable"
    equal = _math_equal(answer, reference_answer)
    if equal is None:
        return "unparseable"
    return "correct" if equal else "wrong"


# ----------------------------------------------------------------------------- grade


def grade(completion: str, reference: str, kind: _Kind = "gsm8k") -> _Grade:
    r"""Grade one sampled completion against a reference.

    Args:
        completion: the model's output text.
        reference: the reference solution (its final answer is extracted: the last
            ``#### <number>`` for GSM8K, the last ``\boxed{...}`` for MATH) or a bare final
            answer (``"18"``, ``"\frac{1}{2}"``).
        kind: ``"gsm8k"`` (exact numeric comparison, see :func:`extract_gsm8k_answer`),
            ``"math"`` (last ``\boxed{}``, equivalence by ``math-verify`` if installed, else a
            normalising string comparison with a one-time warning), or a callable
            ``(completion, reference) -> bool | None`` where ``None`` means unparseable.

    Returns:
        ``"correct"``, ``"wrong"`` or ``"unparseable"`` (the completion has no recognisable
        final answer). Never raises on arbitrary completion text for a valid reference;
        exceptions of a user callable propagate.

    Raises:
        TypeError: ``completion`` or ``reference`` is not a ``str``, or a callable ``kind``
            returned something other than a bool or ``None``.
        ValueError: ``kind`` is not valid, or the reference has no final answer.

    Example:
        >>> grade("9 * 2 = 18\n#### 18", "#### 18")
        'correct'
        >>> grade("The answer is $18.00.", "18")
        'correct'
        >>> grade("I think it is 17", "#### 18")
        'unparseable'
        >>> grade(r"so \boxed{\frac{1}{2}}", r"\frac12", kind="math")
        'correct'
        >>> grade("Paris", "paris", kind=lambda c, r: c.lower() == r.lower())
        'correct'
    """
    for name, value in (("completion", completion), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str, got {type(value).__name__}.")
    if isinstance(kind, str):
        if kind == "gsm8k":
            return _grade_gsm8k(completion, reference)
        if kind == "math":
            return _grade_math(completion, reference)
    elif callable(kind):
        return _grade_callable(kind, completion, reference)
    raise ValueError(
        f"`kind` must be 'gsm8k', 'math' or a callable (completion, reference) -> bool | None, got {kind!r}."
    )


def _grade_callable(check: Callable[[str, str], Any], completion: str, reference: str) -> _Grade:
    result = check(completion, reference)
    if result is None:
        return "unparseable"
    if isinstance(result, bool) or _is_numpy_bool(result):
        return "correct" if result else "wrong"
    raise TypeError(
        f"a callable `kind` must return True (correct), False (wrong) or None (unparseable), "
        f"got {type(result).__name__}: {result!r:.80}."
    )


def _is_numpy_bool(value: object) -> bool:
    cls = type(value)
    return cls.__module__ == "numpy" and cls.__name__ in ("bool", "bool_")
