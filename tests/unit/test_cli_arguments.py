"""Every count, offset and port of the command line is checked by argparse: exit 2 and one line naming it."""

import pytest

from ringfence.ops.cli import main

# (arguments, the option the one line names): every numeric option of every subcommand, each with a bad value
BAD = [
    (["ingest", "f.jsonl", "--partition", "-1", "--of", "2"], "--partition"),
    (["ingest", "f.jsonl", "--partition", "0", "--of", "0"], "--of"),
    (["ingest", "f.jsonl", "--commit-every", "0"], "--commit-every"),
    (["run", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["run", "--checkpoint-every", "-5"], "--checkpoint-every"),
    (["run", "--checkpoint-every", "x"], "--checkpoint-every"),
    (["run", "--chain-every", "0"], "--chain-every"),
    (["run", "--interval", "0"], "--interval"),
    (["positions", "--at", "-1"], "--at"),
    (["positions", "--at-time", "-1"], "--at-time"),
    *(([command, option, "-2"], option) for command in ("wallets", "books", "digest", "markets", "triggers")
      for option in ("--at", "--at-time")),
    (["demo", "--seed", "x"], "--seed"),
    (["demo", "--traders", "1"], "--traders"),
    (["demo", "--events", "0"], "--events"),
    (["generate", "--seed", "1.5"], "--seed"),
    (["generate", "--events", "-1"], "--events"),
    (["generate", "--traders", "0"], "--traders"),
    (["replay", "--to", "-3"], "--to"),
    (["replay", "--partition", "-1"], "--partition"),
    (["replay", "--as-partitions", "0"], "--as-partitions"),
    (["replay", "--as-partitions", "1025"], "--as-partitions"),
    (["replay", "--verify", "--from", "-1"], "--from"),
    (["project", "m:C", "--from", "-1"], "--from"),
    (["project", "m:C", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["project", "m:C", "--partition", "-1"], "--partition"),
    (["topics", "--partitions", "0"], "--partitions"),
    (["topics", "--partitions", "1", "--replication", "0"], "--replication"),
    (["serve", "--metrics-port", "-1"], "--metrics-port"),
    (["serve", "--metrics-port", "65536"], "--metrics-port"),
    (["serve", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["serve", "--chain-every", "-1"], "--chain-every"),
    (["serve", "--session-timeout-ms", "0"], "--session-timeout-ms"),
    (["serve", "--partitions", "0,-1"], "--partitions"),
    (["serve", "--broker-timeout", "0"], "--broker-timeout"),
    (["serve", "--broker-timeout", "nan"], "--broker-timeout"),
    (["run", "--interval", "inf"], "--interval"),
    (["broker", "--port", "0"], "--port"),
]


@pytest.mark.parametrize("arguments, option", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_number_is_a_usage_error_naming_its_option(arguments, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:  # argparse refuses it before the command touches anything
        main([*arguments, *(["--data", str(tmp_path)] if arguments[0] not in ("demo", "generate", "topics", "broker")
                            else [])])  # fmt: skip
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.count("\n") == 1 and f"argument {option}" in err, err
    assert "usage:" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_every_numeric_option_is_in_the_table():
    """A new numeric option must be added above: every option whose argparse type is not str or a flag."""
    from pathlib import Path

    from ringfence.ops.cli import build_parser

    covered = {(arguments[0], option) for arguments, option in BAD}
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = []
    for name, sub in commands.items():
        for action in sub._actions:
            numeric = action.type not in (None, str, Path) and action.nargs != 0 and action.option_strings
            named = action.option_strings[0] if action.option_strings else None
            if numeric and named != "--data" and (name, named) not in covered:
                missing.append((name, named))
    assert not missing, missing
