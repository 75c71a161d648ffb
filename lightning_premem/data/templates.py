"""The skills of the synthetic task: expression templates, their evaluation orders and word-problem skins.

Each :class:`Template` is one skill (e.g. ``"a+b*c+d"``); :data:`TEMPLATES` is the registry
:class:`~lightning_premem.data.synthetic.ArithmeticTask` draws from (see ``docs/synthetic.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

__all__ = ["DEFAULT_TEMPLATES", "LETTERS", "TEMPLATES", "Plan", "Template"]

Ref: TypeAlias = "str | int"  # an operand letter ("a") or the index of an earlier step's result
Step: TypeAlias = "tuple[str, Ref, Ref]"  # (operator, left, right)
#: An evaluation order: ``(op, left, right)`` steps whose operands are letters or indices of earlier steps.
Plan: TypeAlias = "tuple[Step, ...]"
#: The operand letters, in order.
LETTERS = "abcde"


@dataclass(frozen=True)
class Template:
    """One skill: an expression shape whose operands are drawn at random.

    Attributes:
        name: the expression with letters for operands, e.g. ``"a+b*c+d"``; stable, used as the
            rows' ``template`` field and to select templates.
        roles: one character per operand letter (``a``, ``b``, ...): ``"n"`` draws it from
            ``[min_operand, max_operand]`` (two-digit numbers by default), ``"f"`` from
            ``[min_factor, max_factor]`` (one-digit factors by default).
        description: what the skill needs, in words.
        plans: the valid evaluation orders, each a tuple of ``(op, left, right)`` steps whose
            operands are letters or indices of earlier steps; ``plans[0]`` is the canonical one.
        skin: the word-problem text of the ``"words"`` style (a ``str.format`` pattern).
    """

    name: str
    roles: str
    description: str
    plans: tuple[Plan, ...] = field(repr=False)
    skin: str = field(repr=False)

    @property
    def letters(self) -> str:
        """The operand letters, in order: ``"abcd"`` for ``"a+b*c+d"``."""
        return LETTERS[: len(self.roles)]

    @property
    def steps(self) -> int:
        """The number of arithmetic steps of a solution: the template's difficulty."""
        return len(self.plans[0])


def _t(name: str, roles: str, description: str, plans: Sequence[Plan], skin: str) -> Template:
    return Template(name=name, roles=roles, description=description, plans=tuple(plans), skin=skin)


_TEMPLATE_LIST = (
    _t(
        "a+b*c",
        "nff",
        "one-digit product, then a two-digit addition",
        [(("*", "b", "c"), ("+", "a", 0))],
        "{name} has {a} {item}. {pron} buys {b} {boxes} of {c} {item}. How many {item} does {name} have now?",
    ),
    _t(
        "a-b*c",
        "nff",
        "one-digit product, then a subtraction (problems with a negative answer are redrawn)",
        [(("*", "b", "c"), ("-", "a", 0))],
        "{name} has {a} {item}. {pron} sells {b} {boxes} of {c} {item}. How many {item} are left?",
    ),
    _t(
        "a+b*c+d",
        "nffn",
        "one-digit product and two additions, in any of 4 orders",
        [
            (("*", "b", "c"), ("+", "a", 0), ("+", 1, "d")),
            (("*", "b", "c"), ("+", 0, "d"), ("+", "a", 1)),
            (("*", "b", "c"), ("+", "a", "d"), ("+", 1, 0)),
            (("+", "a", "d"), ("*", "b", "c"), ("+", 0, 1)),
        ],
        "{name} has {a} {item}. {pron} buys {b} {boxes} of {c} {item} and finds {d} more. "
        "How many {item} does {name} have now?",
    ),
    _t(
        "a*b+c*d",
        "ffff",
        "two independent one-digit products (either first), then their sum",
        [
            (("*", "a", "b"), ("*", "c", "d"), ("+", 0, 1)),
            (("*", "c", "d"), ("*", "a", "b"), ("+", 1, 0)),
        ],
        "{name} buys {a} {boxes} of {b} {item} and {c} {boxes2} of {d} {item}. How many {item} is that?",
    ),
    _t(
        "(a+b)*c",
        "nff",
        "a two-digit addition, then a multi-digit by one-digit product (harder)",
        [(("+", "a", "b"), ("*", 0, "c"))],
        "A {box} holds {a} red and {b} blue {item}. How many {item} are in {c} {boxes}?",
    ),
    _t(
        "a*b-c",
        "nfn",
        "a two-digit by one-digit product, then a subtraction (harder; negative answers are redrawn)",
        [(("*", "a", "b"), ("-", 0, "c"))],
        "{name} has {a} {boxes} of {b} {item}. {pron} gives away {c} {item}. How many {item} are left?",
    ),
    _t(
        "a*b*c",
        "fff",
        "two products, the second multi-digit by one-digit, grouped in any of 3 ways (harder)",
        [
            (("*", "a", "b"), ("*", 0, "c")),
            (("*", "b", "c"), ("*", "a", 0)),
            (("*", "a", "c"), ("*", 0, "b")),
        ],
        "{name} has {a} crates. Each crate holds {b} {boxes} of {c} {item}. How many {item} is that?",
    ),
    _t(
        "a*b+c*d+e",
        "ffffn",
        "two one-digit products and two additions, in any of 4 orders (4 steps)",
        [
            (("*", "a", "b"), ("*", "c", "d"), ("+", 0, 1), ("+", 2, "e")),
            (("*", "c", "d"), ("*", "a", "b"), ("+", 1, 0), ("+", 2, "e")),
            (("*", "a", "b"), ("*", "c", "d"), ("+", 1, "e"), ("+", 0, 2)),
            (("*", "a", "b"), ("*", "c", "d"), ("+", 0, "e"), ("+", 2, 1)),
        ],
        "{name} buys {a} {boxes} of {b} {item} and {c} {boxes2} of {d} {item}, and has {e} already. "
        "How many {item} does {name} have now?",
    ),
)

#: Every template by name, in a fixed order (the order used to draw a row's template).
TEMPLATES: Mapping[str, Template] = MappingProxyType({t.name: t for t in _TEMPLATE_LIST})
#: The default skills: 2-3 steps with one-digit products and two-digit sums, learnable by a tiny model.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a+b*c", "a-b*c", "a+b*c+d", "a*b+c*d")
