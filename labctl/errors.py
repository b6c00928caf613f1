"""Expected failures, each with the exit code the CLI uses for it.

Only ``cli.py`` turns these into output and an exit status; everything below it raises.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROFILE = 3
EXIT_BACKEND = 4
EXIT_UNREACHABLE = 5
EXIT_CHECKS = 6
EXIT_INTERRUPTED = 130


class LabctlError(Exception):
    """Root of every expected labctl failure.

    Attributes:
        exit_code: the process exit status the CLI uses for this failure.
        hint: an optional one-line suggestion printed after the error.
    """

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """The error as the lines the CLI prints after ``error:``."""
        return [self.message]


class OperationFailed(LabctlError):
    """An operation ran and did not succeed."""

    exit_code = EXIT_FAILED


class GuestControlUnusable(OperationFailed):
    """Guest control cannot work with this driver on this guest: waiting or retrying cannot
    help (and retried guest sessions only slow the guest down)."""


class ProfileError(LabctlError):
    """The profile is missing or invalid; carries every problem found, each with its key path."""

    exit_code = EXIT_PROFILE

    def __init__(self, problems: Sequence[str] | str, *, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems), hint=hint)

    def lines(self) -> list[str]:
        return list(self.problems)


class BackendUnavailable(LabctlError):
    """The hypervisor backend cannot be used on this host (missing tool, SDK, or privileges)."""

    exit_code = EXIT_BACKEND


class GuestUnreachable(LabctlError):
    """A guest did not answer within its deadline."""

    exit_code = EXIT_UNREACHABLE


class ChecksFailed(LabctlError):
    """Lab checks ran and found the lab unhealthy (verify, drills, doctor)."""

    exit_code = EXIT_CHECKS


class UnknownName(LabctlError):
    """A PRODUCTION, MACHINE or PAIR argument the profile does not know: a usage error."""

    exit_code = EXIT_USAGE

    def __init__(self, kind: str, name: str, what: str, lab: str, known: Sequence[str]) -> None:
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(
            f"{kind}: {name!r} is not {what} of lab {lab} (known: {', '.join(known) or 'none'})"
        )
