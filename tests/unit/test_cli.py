"""CLI wiring: help everywhere, one error-translation point, exit codes, --json shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
import pytest

from labctl import __version__
from labctl.cli import cli as cli_group
from labctl.cli import run
from labctl.errors import (
    BackendUnavailable,
    ChecksFailed,
    GuestUnreachable,
    LabctlError,
    OperationFailed,
    ProfileError,
)
from tests.unit.conftest import CliResult


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


ALL_COMMANDS = list(_commands(cli_group))


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=[" ".join(p) for p in ALL_COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], cli: Callable[..., CliResult]) -> None:
    result = cli(*path, "--help")
    assert result.code == 0
    assert result.out.startswith(f"Usage: labctl {' '.join(path)}")


def test_version(cli: Callable[..., CliResult]) -> None:
    result = cli("--version")
    assert (result.code, result.out) == (0, f"labctl, version {__version__}\n")


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "labctl", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and __version__ in done.stdout


def _raiser(exc: BaseException) -> Callable[..., NoReturn]:
    def invoke(**_kwargs: Any) -> NoReturn:
        raise exc

    return invoke


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OperationFailed("provisioning prod-back failed"), 1),
        (ProfileError(["a.b: bad", "c: worse"]), 3),
        (
            BackendUnavailable(
                "systemd-nspawn not found", hint="apt-get install systemd-container"
            ),
            4,
        ),
        (GuestUnreachable("prod-back did not answer on 10.0.0.1:22 within 90 s"), 5),
        (ChecksFailed("pair back: SPLIT_BRAIN"), 6),
    ],
)
def test_error_translation(
    error: LabctlError, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([], invoke=_raiser(error)) == code
    captured = capsys.readouterr()
    expected = [f"error: {line}" for line in error.lines()]
    if error.hint:
        expected.append(f"hint: {error.hint}")
    assert captured.err.splitlines() == expected
    assert captured.out == ""
    assert "Traceback" not in captured.err


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--debug"], invoke=_raiser(OperationFailed("boom"))) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_is_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([], invoke=_raiser(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_unexpected_exception_keeps_its_traceback() -> None:
    # a bug is not an expected failure: it must surface, not be dressed up as "error: ..."
    with pytest.raises(ZeroDivisionError):
        run([], invoke=_raiser(ZeroDivisionError("bug")))


def test_usage_error_is_2(cli: Callable[..., CliResult]) -> None:
    result = cli("render")
    assert result.code == 2
    assert "Missing argument 'PAIR'" in result.err


def test_unknown_command_is_2(cli: Callable[..., CliResult]) -> None:
    assert cli("frobnicate").code == 2


def test_profile_check_json_shape(cli: Callable[..., CliResult]) -> None:
    result = cli("-p", "it490", "profile", "check", "--json")
    assert result.code == 0
    document = json.loads(result.out)
    assert document == {
        "ok": True,
        "path": document["path"],
        "lab": "it490",
        "backend": "virtualbox",
        "machines": 3,
        "pairs": ["front", "back", "db"],
    }
    assert document["path"].endswith("profiles/it490.toml")


def test_profile_schema_is_json_schema(cli: Callable[..., CliResult]) -> None:
    result = cli("profile", "schema")
    schema = json.loads(result.out)
    assert schema["title"] == "Profile"
    assert set(schema["required"]) == {"lab", "machines"}
    assert "vrid" in schema["$defs"]["PairSpec"]["properties"]


def test_profile_env_var(cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCTL_PROFILE", "local-lab")
    assert "backend nspawn" in cli("profile", "check").out
