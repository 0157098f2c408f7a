import os
import subprocess
import sys
from pathlib import Path

import pytest


def ringfence(*args, data: Path, stdin: bytes | None = None, env: dict | None = None, check_rc: int | None = 0):
    """Run the real CLI in a fresh process; return (rc, stdout, stderr)."""
    full_env = {**os.environ, "RINGFENCE_DATA": str(data), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "ringfence.ops.cli", *args],
        input=stdin, capture_output=True, env=full_env, timeout=600,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    if check_rc is not None:
        assert result.returncode == check_rc, f"rc={result.returncode}\nstdout={out[-2000:]}\nstderr={err[-2000:]}"
    return result.returncode, out, err


@pytest.fixture
def cli():
    return ringfence
