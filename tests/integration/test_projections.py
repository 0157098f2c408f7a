"""Forked projections (projections.sdk, `ringfence project`): resumable, own store, never the core's."""

import json
import os
from pathlib import Path

from tests.integration.test_cli import session_file

MODULES = str(Path(__file__).parent / "projection_modules")
TALLY = "flaky:Tally"


def project(cli, data, *args, env=None, check_rc=0, spec=TALLY):
    rc, out, err = cli("project", spec, "--json", *args, data=data, check_rc=check_rc,
                       env={"PYTHONPATH": MODULES, **(env or {})})  # fmt: skip
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_a_stopped_projection_resumes_from_its_checkpoint_and_ends_as_one_run(tmp_path, cli):
    data = tmp_path / "data"
    cli("ingest", str(session_file(tmp_path, seed=51, count=1_200)), data=data)
    cli("run", data=data, check_rc=None)
    core_before = cli("digest", data=data)[1], sorted(os.listdir(data / "state"))
    whole = project(cli, data, "--store", str(tmp_path / "whole"))[1]
    rc, _, err = project(cli, data, "--checkpoint-every", "100", env={"FAIL_AT": "733"}, check_rc=1)
    assert err.strip() == (f"ringfence: error: {TALLY} failed at offset 733: RuntimeError: boom "
                           "(its last checkpoint is kept: run again to resume)")  # fmt: skip
    _, resumed, err = project(cli, data, "--checkpoint-every", "100")
    assert "at offset 1199, 500 events applied in this run" in err  # from the checkpoint after offset 699
    assert resumed == whole and whole[0]["first"] == 0 and whole[0]["last"] == 1199
    assert (cli("digest", data=data)[1], sorted(os.listdir(data / "state"))) == core_before  # the core untouched


def test_a_projection_goes_on_when_the_log_grows_and_from_an_offset(tmp_path, cli):
    lines = session_file(tmp_path, seed=52, count=1_000).read_bytes().splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:400]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[400:]))
    (tmp_path / "all.jsonl").write_bytes(b"".join(lines))
    grown, whole = tmp_path / "grown", tmp_path / "whole"
    cli("ingest", str(tmp_path / "a.jsonl"), data=grown)
    project(cli, grown, "--from", "300")
    cli("ingest", str(tmp_path / "b.jsonl"), data=grown)
    cli("ingest", str(tmp_path / "all.jsonl"), data=whole)
    assert project(cli, grown)[1] == project(cli, whole, "--from", "300")[1]  # no core run needed either
    tally = project(cli, whole, "--from", "300")[1][0]
    assert (tally["first"], tally["last"], sum(tally["types"].values())) == (300, 999, 700)


def test_projection_mistakes_are_one_line(tmp_path, cli):
    data = tmp_path / "data"
    cli("ingest", str(session_file(tmp_path, seed=53, count=50)), data=data)
    for spec, message in (("nocolon", "'nocolon' is not MODULE:CLASS"),
                          ("missing_module:X", "cannot import missing_module"),
                          ("flaky:NotAProjection", "flaky:NotAProjection is not a subclass of"),
                          ("flaky:Nothing", "flaky:Nothing is not a subclass of")):  # fmt: skip
        err = project(cli, data, spec=spec, check_rc=2)[2]
        assert len(err.strip().splitlines()) == 1 and message in err
    project(cli, data, "--store", str(tmp_path / "p"))
    err = project(cli, data, "--store", str(tmp_path / "p"), spec="examples.fees:FeesPerAccount", check_rc=2)[2]
    assert f"holds the checkpoint of {TALLY}, not examples.fees:FeesPerAccount" in err


def test_the_readme_example_projection_sums_the_fees_of_the_applied_fills(tmp_path, cli):
    data = tmp_path / "data"
    source = session_file(tmp_path, seed=54, count=600)
    cli("ingest", str(source), data=data)
    cli("run", data=data, check_rc=None)
    refused = {json.loads(line)["event_id"] for line in cli("rejections", "--json", data=data)[1].splitlines()}
    expected: dict[str, int] = {}
    from ringfence.core.fixed import format_decimal, parse_decimal

    for line in source.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "fill" and event["id"] not in refused:
            expected[event["account"]] = expected.get(event["account"], 0) + parse_decimal(event["fee"], allow_negative=True)
    rows = project(cli, data, spec="examples.fees:FeesPerAccount", env={"PYTHONPATH": str(Path.cwd())})[1]
    assert {row["account"]: row["fees"] for row in rows} == {a: format_decimal(f) for a, f in expected.items()}


def test_restart_deletes_only_a_directory_marked_as_a_projection_store(tmp_path, cli):
    data = tmp_path / "data"
    cli("ingest", str(session_file(tmp_path, seed=55, count=300)), data=data)
    cli("run", data=data, check_rc=None)
    core = cli("digest", data=data)[1]
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "thesis.txt").write_text("years of work\n")
    for other in (papers, data / "state"):  # any directory, the core's own store included
        before = sorted(p.name for p in other.iterdir())
        for args in (["--restart"], []):  # nor does a projection move into a directory that is not its store
            err = project(cli, data, "--store", str(other), *args, check_rc=2)[2]
            assert err.splitlines() == [f"ringfence: error: {other} is not a projection store (it has no "
                                        "RINGFENCE-PROJECTION-STORE file); nothing was deleted or written"]  # fmt: skip
            assert sorted(p.name for p in other.iterdir()) == before
    assert (papers / "thesis.txt").read_text() == "years of work\n" and cli("digest", data=data)[1] == core
    # a store of its own is marked when created, and --restart starts it again from scratch
    store = tmp_path / "tally"
    first = project(cli, data, "--store", str(store), "--from", "200")[1]
    assert (store / "RINGFENCE-PROJECTION-STORE").is_file() and first[0]["first"] == 200
    assert project(cli, data, "--store", str(store), "--restart")[1][0]["first"] == 0
    # a store from before the marker (meta:class names its projection) is recognised and marked on its next run
    (store / "RINGFENCE-PROJECTION-STORE").unlink()
    assert project(cli, data, "--store", str(store))[1][0]["first"] == 0
    assert (store / "RINGFENCE-PROJECTION-STORE").is_file()
