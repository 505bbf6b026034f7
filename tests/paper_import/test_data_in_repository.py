"""Nothing the product or its tests run reads data from outside the repository (a fresh clone has no ../shared)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A path built to a sibling "shared" folder: `parents[n] / "shared"`, "../shared", or an absolute /work/shared.
OUTSIDE = re.compile(r"""["']shared["']\s*/|\.\./shared|/work/shared""")


def test_no_tracked_file_reads_the_shared_folder_beside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    code = [ROOT / name for name in tracked.split() if name.endswith((".py", ".html", ".js", ".toml", ".cfg"))]
    assert len(code) > 50
    offenders = [str(path.relative_to(ROOT)) for path in code
                 if path != Path(__file__).resolve() and OUTSIDE.search(path.read_text())]
    assert offenders == []
