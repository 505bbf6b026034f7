"""The static check (a lint feeding repair rounds): precise findings with line numbers."""

from __future__ import annotations

import pytest

from mechanisms.validation.static_check import static_check

GOOD = '''"""A fine mechanism."""
import math
from collections import Counter

WINDOW = 5
LIMITS = frozenset({"DEPTH"})
SCALE = math.log(2)


def helper(values):
    return Counter(values)


class Tabu:
    def __init__(self, window=WINDOW):
        self.window = window

    def filter(self, proposal, state):
        return None
'''


def test_good_code_passes() -> None:
    assert static_check(GOOD, "Tabu") == []
    assert static_check(GOOD, None) == []


@pytest.mark.parametrize(("code", "expected"), [
    ("class A:\n    def filter(self, p, s)\n        return None\n", "line 2: syntax error"),
    ("import os\nclass A:\n    def filter(self, p, s):\n        return None\n", "line 1: import of 'os'"),
    ("from subprocess import run\nclass A:\n    def filter(self, p, s):\n        return None\n",
     "import of 'subprocess'"),
    ("from . import x\nclass A:\n    def filter(self, p, s):\n        return None\n", "relative import"),
    ("import importlib.util\nclass A:\n    def filter(self, p, s):\n        return None\n", "'importlib.util'"),
    ("class A:\n    def filter(self, p, s):\n        return eval('1')\n", "line 3: call to eval()"),
    ("class A:\n    def filter(self, p, s):\n        return open('/etc/passwd').read()\n", "call to open()"),
    ("class A:\n    def filter(self, p, s):\n        return ().__class__.__bases__[0].__subclasses__()\n",
     "dunder attribute '__class__'"),
    ("class A:\n    def filter(self, p, s):\n        return getattr(p, '__class__')\n", "string '__class__'"),
    ("class A:\n    def filter(self, p, s):\n        return getattr(p, 'a' + 'b')\n", "computed attribute"),
    ("class A:\n    def filter(self, p, s):\n        return __builtins__\n", "dunder name '__builtins__'"),
    ("print('hi')\nclass A:\n    def filter(self, p, s):\n        return None\n", "line 1: module-level Expr"),
    ("X = open('f')\nclass A:\n    def filter(self, p, s):\n        return None\n", "constant expression"),
    ("class A:\n    pass\n", "defines none of the hooks"),
    ("class A:\n    def filter(self, p):\n        return None\n", "filter() takes 2 positional"),
    ("class A:\n    def __init__(self, seed):\n        pass\n    def filter(self, p, s):\n        return None\n",
     "__init__ must be callable with no arguments"),
    ("class A:\n    def filter(self, p, s):\n        return None\nclass B:\n    pass\n", "exactly one top-level class"),
])
def test_findings(code: str, expected: str) -> None:
    problems = static_check(code, "A")
    assert any(expected in problem for problem in problems), problems


def test_class_name_must_match_spec() -> None:
    assert static_check(GOOD, "Bandit") == ["line 14: the class is named 'Tabu' but the spec names 'Bandit'"]


@pytest.mark.parametrize(("code", "expected"), [
    ("import random\nclass A:\n    def filter(self, p, s):\n        return random._os\n", "private attribute '_os'"),
    ("import dataclasses\nclass A:\n    def filter(self, p, s):\n        return dataclasses.sys\n",
     "'dataclasses.sys' reaches module 'sys'"),
    ("import typing as t\nclass A:\n    def filter(self, p, s):\n        return t.sys\n", "reaches module 'sys'"),
    ("from dataclasses import inspect\nclass A:\n    def filter(self, p, s):\n        return None\n",
     "reaches inspect"),
])
def test_module_graph_walks_are_flagged(code: str, expected: str) -> None:
    problems = static_check(code, "A")
    assert any(expected in problem for problem in problems), problems


def test_private_state_on_self_is_fine() -> None:
    code = "import collections\nclass A:\n    def __init__(self):\n        self._seen = collections.abc.Mapping\n" \
           "    def filter(self, p, s):\n        return None\n"
    assert static_check(code, "A") == []


def test_print_and_infinity_used_inside_a_hook_pass() -> None:
    # The host drops printed text and rejects a returned non-finite value at the dry run; refusing the
    # ordinary idioms here only cost a small model its session.
    code = ("class A:\n    def filter(self, p, s):\n        best = float('inf')\n        print('seen', best)\n"
            "        for record in s['trace']:\n            if record['val_bpb'] is not None:\n"
            "                best = min(best, record['val_bpb'])\n        return None\n")
    assert static_check(code, "A") == []
