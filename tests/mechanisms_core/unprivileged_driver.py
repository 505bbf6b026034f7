"""Runs every attack in a kernel-only host (no Python guards) as whatever user starts it.

``test_isolation.py`` starts it as an unprivileged user with the system interpreter, from a copy
of the few modules it needs (the checkout itself may not be readable by that user):

    python3.11 -I -S unprivileged_driver.py <module dir>   < {"targets": {...}}   > [outcome, ...]

Standard library + ``mechanisms`` + ``pyseccomp`` only.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from attacks import ATTACKS, supported

    from mechanisms.sandbox.host import HostError, MechanismCallError, MechanismHost

    request = json.load(sys.stdin)
    targets: dict[str, Any] = request["targets"]
    outcomes: list[dict[str, Any]] = []
    with MechanismHost() as victim:
        victim.load([{"name": "victim", "class_name": "Mechanism",
                      "code": "class Mechanism:\n    def propose(self, state):\n        return None\n"}])
        targets = {**targets, "victims": [*targets["victims"], victim.pid]}
        for attack in ATTACKS:
            if not supported(attack):
                continue
            outcome: dict[str, Any] = {"name": attack.name}
            try:
                with MechanismHost(time_limit_per_call=5.0, python_guards=False) as host:
                    host.load([{"name": "m", "class_name": "Mechanism", "code": attack.code(targets)}])
                    outcome.update(kind="returned", detail=json.dumps(host.call("m", "propose", {})))
            except MechanismCallError as error:
                outcome.update(kind=error.kind, detail=str(error))
            except HostError as error:
                outcome.update(kind=error.kind, detail=str(error))
            outcomes.append(outcome)
        victim.ping()  # raises if an attack killed it
        outcomes.append({"name": "victim host", "kind": "alive", "detail": str(victim.pid)})
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()
