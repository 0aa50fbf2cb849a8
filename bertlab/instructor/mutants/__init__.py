"""The mutation suite: plausible wrong answers (and other right ones) for every graded exercise.

One module per notebook, named after it: ``nb04_finetuning.py`` for ``04-finetuning``. Each holds
two dicts keyed by the grade_id of an exercise's solution cell:

``MUTANTS``
    ``{grade_id: {name: source}}``: at least four mistakes a learner could plausibly make. Each is
    a real mistake (not an equivalent rewrite) that runs without raising; the exercise's graded
    test cells (visible and hidden) must fail on every one of them.
``ALTERNATIVES``
    ``{grade_id: {name: source}}``: at least one *correct* solution written differently from the
    instructor's (another formula, another loop order, a library call). It must pass every test
    cell of its exercise: the tests must stay fair.

A ``source`` is the full replacement source of the solution cell (what the learner's cell holds),
or :func:`edit`, a few exact replacements applied to the solution cell as the learner would
hand it in (the solution with its ``### BEGIN/END SOLUTION`` markers removed); each old text
must occur exactly once, so a mutant whose text no longer matches the solution fails loudly.

``python -m bertlab.instructor.mutation [NOTEBOOK ...]`` grades them (see that module).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """Replacements (old, new) applied to the solution cell: each ``old`` occurs exactly once."""
    replacements: tuple[tuple[str, str], ...]

    def apply(self, source: str) -> str:
        for old, new in self.replacements:
            n = source.count(old)
            if n != 1:
                raise ValueError(f"edit: {old!r} occurs {n} times in the solution cell (expected exactly once)")
            source = source.replace(old, new)
        return source


def edit(*pairs: tuple[str, str]) -> Edit:
    """A variant written as exact replacements of the solution cell: ``edit((old, new), ...)``."""
    if not pairs or not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs):
        raise TypeError("edit: expected one or more (old, new) pairs of strings")
    return Edit(tuple(pairs))


def module_name(assignment: str) -> str:
    """``04-finetuning`` -> ``nb04_finetuning``."""
    return "nb" + assignment.replace("-", "_")


def load(assignment: str):
    """The suite module of an assignment, or None when it has none."""
    try:
        return importlib.import_module(f"{__name__}.{module_name(assignment)}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{module_name(assignment)}":
            return None
        raise
