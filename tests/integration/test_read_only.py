"""Queries open the data directory read-only: they answer on a `chmod -R a-w` copy and change nothing in it."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.test_cli import session_file

NOBODY = 65534

# Every query a read-only operator runs; ACCOUNT is filled in from the first position.
QUERIES = [["positions"], ["wallets"], ["books"], ["markets"], ["digest"], ["commands"], ["commands", "--live"],
           ["rejections"], ["alerts"], ["chain"], ["history", "ACCOUNT", "MARKET"], ["positions", "--at", "450"],
           ["digest", "--at", "250"], ["replay"], ["replay", "--verify"]]  # fmt: skip

# runs each query through the real CLI entry point in one process: [[rc, stderr], ...] on stdout
RUNNER = """
import contextlib, io, json, sys
from ringfence.ops.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


def listing(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its type, size, mode and modification time."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mode, info.st_mtime_ns)
    return found


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def read_only_data(tmp_path_factory):
    """A data directory after ingest and run (chain links and snapshots every 100 events), then `chmod -R a-w`.

    It lives in a directory every user may enter, so that another user can be tried on it.
    """
    from tests.integration.conftest import ringfence

    home = Path(tempfile.mkdtemp(prefix="ringfence-read-only-"))
    home.chmod(0o755)
    data = home / "data"
    source = session_file(tmp_path_factory.mktemp("session"), seed=33, count=600)
    ringfence("ingest", str(source), data=data)
    ringfence("run", "--chain-every", "100", data=data, check_rc=None)
    position = json.loads(ringfence("positions", "--json", data=data)[1].splitlines()[0])
    assert (data / "snapshots").is_dir()
    set_writable(data, False)
    queries = [[position["account"] if a == "ACCOUNT" else position["market"] if a == "MARKET" else a for a in q]
               + ["--data", str(data)] for q in QUERIES]  # fmt: skip
    yield data, queries
    set_writable(data, True)
    shutil.rmtree(home)


def run_queries(queries, prefix=()) -> list:
    result = subprocess.run([*prefix, sys.executable, "-c", RUNNER, json.dumps(queries)], capture_output=True,
                            timeout=300, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return json.loads(result.stdout)


def assert_all_answered(queries, results) -> None:
    failed = [(query[:-2], rc, err.strip()[-300:]) for query, (rc, err) in zip(queries, results) if rc != 0]
    assert not failed


def test_queries_create_or_modify_nothing_in_the_data_directory(read_only_data):
    """As any user (root too, whom chmod does not stop): a query leaves every file and directory as it was."""
    data, queries = read_only_data
    before = listing(data)
    results = run_queries(queries)
    assert_all_answered(queries, results)
    assert listing(data) == before


def test_queries_answer_on_a_read_only_data_directory(read_only_data):
    data, queries = read_only_data
    prefix = ()
    if os.geteuid() == 0:  # chmod does not stop root: ask the same of an unprivileged user, where one can be had
        setpriv = shutil.which("setpriv")
        probe = setpriv and subprocess.run(
            [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c",
             "import ringfence.ops.cli"], capture_output=True, cwd=data.parent)  # fmt: skip
        if not probe or probe.returncode != 0:
            pytest.skip("running as root (chmod -R a-w does not stop root's writes) and no unprivileged user can run "
                        "this checkout through setpriv; the test above still checks that nothing is written")
        prefix = (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
        assert subprocess.run([*prefix, "touch", str(data / "probe")], capture_output=True).returncode != 0
    assert_all_answered(queries, run_queries(queries, prefix))
