"""The command line: every command is registered (an import error is a failure, not a missing
command), each answers --help, and a bad argument gets one line."""
from __future__ import annotations

import pytest

from stream.cli.main import build_parser, main

pytestmark = pytest.mark.unit

COMMANDS = {"worker", "trainer", "model", "replay", "broker", "train", "evaluate", "generate",
            "demo", "topics"}


def _registered() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_every_command_is_registered():
    assert _registered() == COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"seqstream {command}" in capsys.readouterr().out


def test_a_bad_argument_gets_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--batch-max", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-max" in err[0]
