"""Adversarial mechanism code: each case is rejected by the static check AND, loaded straight
into the host with the static check bypassed, contained at runtime with a clear reason and no
effect outside the sandbox.

`python -m tests.mechanisms_core.test_adversarial` prints the table kept in mechanisms/ADVERSARIAL.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost
from mechanisms.validation.static_check import static_check
from tests.mechanisms_core.helpers import source

SECRET_NAME = "BILEVEL_TEST_SECRET"
SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex
ESCAPE_FILE = Path("/tmp") / f"bilevel-escape-{uuid.uuid4().hex}"
TIME_LIMIT = 1.0


@dataclass
class Outcome:
    kind: str  # "returned" | "load_error" | MechanismCallError.kind | HostError.kind
    detail: str
    value: object = None
    host_alive: bool = True


@dataclass
class Case:
    name: str
    code: str
    contained: Callable[[Outcome], bool]
    # Resource exhaustion and some bad return values are not static properties of the code:
    # for those only the runtime containment is asserted (the table says so).
    statically_detectable: bool = True
    time_limit: float = TIME_LIMIT
    hook: str = "propose"
    args: list[object] = field(default_factory=lambda: [{}])


def _mechanism(body: str, imports: str = "") -> str:
    return f"{imports}\nclass Mechanism:\n    def propose(self, state):\n" + \
        "\n".join("        " + line for line in body.strip().splitlines()) + "\n"


def _blocked(fragment: str) -> Callable[[Outcome], bool]:
    return lambda o: o.kind in ("exception", "forbidden", "load_error") and fragment in o.detail and o.host_alive


def _secret_not_seen(outcome: Outcome) -> bool:
    return outcome.kind == "returned" and SECRET_VALUE not in repr(outcome.value)


def _no_escape_file(outcome: Outcome) -> bool:
    return not ESCAPE_FILE.exists() and outcome.kind in ("exception", "forbidden") and "not allowed" in outcome.detail


SUBCLASS_WALK = f"""
for cls in ().__class__.__bases__[0].__subclasses__():
    if cls.__name__ == "_wrap_close":
        cls.__init__.__globals__["system"]("touch {ESCAPE_FILE}")
return None
"""

CASES = [
    Case("read a secret from the environment",
         _mechanism(f"env = dict(random._os.environ)\nreturn {{'changes': {{'X': 1}}, 'hypothesis': "
                    f"repr(env) + repr(env.get('{SECRET_NAME}'))}}", "import random"),
         _secret_not_seen),
    Case("read the parent's environment via /proc",
         _mechanism("return {'changes': {'X': 1}, 'hypothesis': "
                    "dataclasses.builtins.open('/proc/' + str(random._os.getppid()) + '/environ').read()}",
                    "import random, dataclasses"),
         _blocked("open is not allowed")),
    Case("import socket", _mechanism("return None", "import socket"), _blocked("import of 'socket' is not allowed")),
    Case("import subprocess via importlib",
         _mechanism("dataclasses.sys.modules['importlib'].import_module('subprocess').run(['id'])\nreturn None",
                    "import dataclasses"),
         _blocked("open is not allowed")),
    Case("ctypes via __import__ from the real builtins, then libc socket()",
         _mechanism("dataclasses.builtins.__import__('ctypes').CDLL(None).socket(2, 1, 0)\nreturn None",
                    "import dataclasses"),
         _blocked("ctypes.dlopen is not allowed")),
    Case("().__class__.__bases__[0].__subclasses__() walk to os.system",
         _mechanism(SUBCLASS_WALK), lambda o: _blocked("os.system is not allowed")(o) and not ESCAPE_FILE.exists()),
    Case("fork bomb (os.fork in a loop, via random._os)",
         _mechanism("while True:\n    random._os.fork()", "import random"), _blocked("os.fork is not allowed")),
    Case("kill the parent (os.kill)",
         _mechanism("random._os.kill(random._os.getppid(), 9)\nreturn None", "import random"),
         _blocked("os.kill is not allowed")),
    Case("memory bomb: 'a' * 10**10", _mechanism("x = 'a' * 10**10\nreturn None"), _blocked("MemoryError"),
         statically_detectable=False),
    Case("memory bomb: list growth",
         _mechanism("x = []\nwhile True:\n    x.append(' ' * 10**6)"), _blocked("MemoryError"),
         time_limit=10.0),  # filling 512 MB takes ~2 s on a busy 2-core machine
    Case("infinite loop in a hook", _mechanism("while True:\n    pass"),
         lambda o: o.kind == "timeout" and not o.host_alive),
    Case("write outside the scratch dir (builtins open)",
         _mechanism(f"open('{ESCAPE_FILE}', 'w').write('x')\nreturn None"),
         lambda o: not ESCAPE_FILE.exists() and _blocked("name 'open' is not defined")(o)),
    Case("write outside the scratch dir (os.open via the module graph)",
         _mechanism(f"random._os.open('{ESCAPE_FILE}', random._os.O_CREAT | random._os.O_WRONLY)\nreturn None",
                    "import random"),
         _no_escape_file),
    Case("print 100 MB",
         _mechanism("print('x' * 10**8)\nreturn {'changes': {'X': 1}, 'hypothesis': 'quiet'}"),
         lambda o: o.kind == "returned" and o.value == {"changes": {"X": 1}, "hypothesis": "quiet"},
         statically_detectable=False),  # harmless: the host's capped sink drops it
    Case("return a 50 MB string", _mechanism("return 'x' * (50 * 10**6)"),
         lambda o: o.kind == "bad_return" and "response too large" in o.detail,
         statically_detectable=False),
    Case("return a set", _mechanism("return {1, 2}"), lambda o: o.kind == "bad_return" and "set" in o.detail),
    Case("return an object", _mechanism("return object()"), lambda o: o.kind == "bad_return" and "object" in o.detail,
         statically_detectable=False),
    Case("return NaN", _mechanism("return float('nan')"), lambda o: o.kind == "bad_return" and "not JSON" in o.detail,
         statically_detectable=False),  # caught where it matters: the returned value is checked
    Case("switch off the audit hook (replace its __code__)",
         _mechanism("hook = dataclasses.sys.modules['__main__'].deny_side_effects\n"
                    "hook.__code__ = (lambda event, args: None).__code__\n"
                    f"dataclasses.builtins.open('{ESCAPE_FILE}', 'w')\nreturn None", "import dataclasses"),
         lambda o: _blocked("setting __code__ is not allowed")(o) and not ESCAPE_FILE.exists()),
    Case("exec new code after loading",
         _mechanism("dataclasses.builtins.exec('x = 1')\nreturn None", "import dataclasses"),
         _blocked("dynamic code (compile) is not allowed")),
    Case("forge a protocol reply on the saved stdout fd",
         _mechanism("for fd in range(3, 10):\n    try:\n"
                    "        random._os.write(fd, b'{\"id\": 999, \"ok\": true}\\n')\n"
                    "    except OSError:\n        pass\nreturn None", "import random"),
         lambda o: o.kind == "protocol" and not o.host_alive),
    Case("code at import time (module-level side effect)",
         "import random\nrandom._os.system('touch " + str(ESCAPE_FILE) + "')\nclass Mechanism:\n"
         "    def propose(self, state):\n        return None\n",
         lambda o: o.kind == "load_error" and "os.system is not allowed" in o.detail and not ESCAPE_FILE.exists()),
]


def run_in_host(case: Case) -> Outcome:
    """Load the case's code straight into a host (no static check) and call its hook."""
    with MechanismHost(time_limit_per_call=case.time_limit) as host:
        try:
            report = host.load([source(case.code)])
            if "m" in report["errors"]:
                return Outcome("load_error", report["errors"]["m"].strip().splitlines()[-1])
            value = host.call("m", case.hook, *case.args)
            return Outcome("returned", "returned normally", value)
        except MechanismCallError as error:
            return Outcome(error.kind, str(error).strip().splitlines()[-1])
        except HostError as error:
            assert not host.alive
            return Outcome(error.kind, str(error).splitlines()[0], host_alive=False)


@pytest.fixture(scope="module", autouse=True)
def secret_in_parent_env() -> Iterator[None]:
    os.environ[SECRET_NAME] = SECRET_VALUE
    yield
    del os.environ[SECRET_NAME]
    ESCAPE_FILE.unlink(missing_ok=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_static_check_rejects(case: Case) -> None:
    assert bool(static_check(case.code, "Mechanism")) == case.statically_detectable, case.name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_contained_at_runtime(case: Case) -> None:
    outcome = run_in_host(case)
    assert case.contained(outcome), outcome
    assert not ESCAPE_FILE.exists()


def _describe(outcome: Outcome) -> str:
    if outcome.kind == "returned":
        return f"returned normally ({str(outcome.value)[:60]!r})"
    prefix = "host killed, " if not outcome.host_alive else ""
    return f"{prefix}{outcome.kind}: {outcome.detail[:110]}"


def table() -> str:
    os.environ[SECRET_NAME] = SECRET_VALUE
    rows = ["| case | static check verdict | runtime outcome (static check bypassed) |", "|---|---|---|"]
    for case in CASES:
        verdict = static_check(case.code, "Mechanism")
        static = f"rejected: {verdict[0]}" if verdict else "passes (not a static property)"
        rows.append(f"| {case.name} | {static} | {_describe(run_in_host(case))} |".replace("\n", " "))
    ESCAPE_FILE.unlink(missing_ok=True)
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
