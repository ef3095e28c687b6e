"""``manage.py runworker`` and ``csp-bus worker`` take the same worker options."""

from __future__ import annotations

import argparse

from csp_bus.adapters.django.management.commands.runworker import Command

from csp_bus.cli import build_parser
from csp_bus.worker import add_worker_arguments


def options(parser: argparse.ArgumentParser) -> dict[str, tuple[object, ...]]:
    return {
        action.option_strings[0]: (action.dest, action.type, action.default, action.metavar)
        for action in parser._actions
        if action.option_strings
    }


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def test_both_commands_have_the_shared_worker_options() -> None:
    shared = argparse.ArgumentParser()
    add_worker_arguments(shared)
    wanted = options(shared)
    del wanted["-h"]
    assert set(wanted) == {
        "--threads",
        "--only-channels",
        "--exclude-channels",
        "--message-retries",
        "--grace-period",
    }
    cli = options(subparser(build_parser(), "worker"))
    django = options(Command().create_parser("manage.py", "runworker"))
    for name, spec in wanted.items():
        assert cli[name] == spec
        if name == "--threads":  # runworker falls back to CSP_BUS["WORKER_THREADS"]
            assert django[name] == (*spec[:2], None, spec[3])
        else:
            assert django[name] == spec
    parsed = (
        Command()
        .create_parser("manage.py", "runworker")
        .parse_args(["--only-channels", "a.*", "--grace-period", "2", "--message-retries", "3"])
    )
    assert (parsed.only_channels, parsed.grace_period, parsed.message_retries) == (["a.*"], 2, 3)
    assert parsed.threads is None and parsed.no_views is False
