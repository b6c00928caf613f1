"""Which SSH host keys labctl trusts: trust on first use, refuse a changed key.

Trusted keys come from labctl's own record for the lab (``labctl.paths.known_hosts_path``,
written on first use and by ``labctl clone`` / the nspawn backend for new machines) and the
user's ``~/.ssh/known_hosts``. Both are OpenSSH known_hosts files.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from labctl.errors import OperationFailed

log = logging.getLogger(__name__)


def fingerprint(key: paramiko.PKey) -> str:
    """A key's OpenSSH-style fingerprint, ``SHA256:...``."""
    return str(key.fingerprint)


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under (``[host]:port`` off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


class HostKeyChanged(OperationFailed):
    """A machine offered a host key different from the trusted one (never retried).

    Attributes:
        offered: the offered key's type and SHA256 fingerprint.
        trusted: the trusted keys' types and fingerprints, each with the file line holding it.
    """

    def __init__(self, name: str, host: str, offered: str, trusted: Sequence[str]) -> None:
        super().__init__(
            f"{name} ({host}): host key changed: it offered {offered}, but the trusted key is "
            f"{' / '.join(trusted)}; refusing to connect",
            hint="if the machine was rebuilt on purpose, remove its old line "
            f"(ssh-keygen -R '{host}' -f FILE) and run again",
        )
        self.offered = offered
        self.trusted = tuple(trusted)


@dataclass(frozen=True)
class TrustedKey:
    """One known_hosts entry: the host patterns, the key, and ``file:line`` it came from.

    ``key`` is None for an entry labctl cannot read (bad base64, unknown type): it still
    counts as a record for its hosts, so a broken line never turns into trust on first use.
    """

    patterns: tuple[str, ...]
    key: paramiko.PKey | None
    source: str

    def describe(self) -> str:
        if self.key is None:
            return f"an unreadable entry ({self.source})"
        return f"{self.key.get_name()} {fingerprint(self.key)} ({self.source})"


@dataclass(frozen=True)
class _Line:
    patterns: tuple[str, ...]
    text: str
    source: str


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns know only * and ?; "[host]:port" brackets are literal
    return re.compile("".join({"*": ".*", "?": "."}.get(c, re.escape(c)) for c in pattern))


def _name_matches(name: str, patterns: Iterable[str]) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if pattern.startswith("|1|"):
            hit = paramiko.HostKeys.hash_host(name, pattern) == pattern
        else:
            hit = _glob(pattern).fullmatch(name) is not None
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def _same_key(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.get_name() == b.get_name() and a.asbytes() == b.asbytes()


def _default_user_files() -> tuple[Path, ...]:
    return (Path("~/.ssh/known_hosts").expanduser(),)


@dataclass
class HostKeyStore:
    """Trusted host keys: labctl's record (read-write) and the user's known_hosts (read-only).

    A key is trusted when it matches any entry for the host in either file. A host with entries
    but no matching key is refused (``HostKeyChanged``); a host with no entry at all is trusted
    on first use and appended to ``record``, with a notice. Safe to share between threads.

    Attributes:
        record: labctl's record for the lab.
        user_files: other known_hosts files to trust (read-only).
        notices: one line per key trusted on first use, for the caller to show.
    """

    record: Path
    user_files: tuple[Path, ...] = field(default_factory=_default_user_files)
    notices: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _files: dict[Path, tuple[tuple[int, int, int], list[_Line]]] = field(
        default_factory=dict, repr=False
    )

    def _lines(self, path: Path) -> list[_Line]:
        """The entries of one file, re-read only when the file changed (clone may add keys)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OperationFailed(f"cannot read known hosts file {path}: {exc}") from exc
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._files.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise OperationFailed(f"cannot read known hosts file {path}: {exc}") from exc
        lines = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith(("#", "@")):
                lines.append(_Line(tuple(line.split()[0].split(",")), line, f"{path}:{lineno}"))
        self._files[path] = (signature, lines)
        return lines

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _parse(line: _Line) -> TrustedKey:
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line.text)
        except (paramiko.hostkeys.InvalidHostKey, ValueError, paramiko.SSHException):
            entry = None
        key = entry.key if entry is not None else None
        return TrustedKey(line.patterns, key, line.source)

    def trusted(self, host: str) -> list[TrustedKey]:
        """Every trusted key recorded for a known_hosts name (``host`` or ``[host]:port``)."""
        return [
            self._parse(line)
            for path in (self.record, *self.user_files)
            for line in self._lines(path)
            if _name_matches(host, line.patterns)
        ]

    def check(self, name: str, host: str, key: paramiko.PKey) -> None:
        """Accept the key, record it on first use, or raise HostKeyChanged.

        Args:
            name: the machine's name, for messages.
            host: its known_hosts name (``host`` or ``[host]:port``).
            key: the key it offered.
        """
        if any(t.key is not None and _same_key(t.key, key) for t in self.trusted(host)):
            return  # the common case: no lock, so many connections verify at once
        with self._lock:
            trusted = self.trusted(host)
            if any(t.key is not None and _same_key(t.key, key) for t in trusted):
                return
            if trusted:
                raise HostKeyChanged(
                    name,
                    host,
                    f"{key.get_name()} {fingerprint(key)}",
                    [t.describe() for t in trusted],
                )
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with self.record.open("a", encoding="utf-8") as fh:
                fh.write(f"{host} {key.get_name()} {key.get_base64()}\n")
            notice = (
                f"{name}: trusting new host key {key.get_name()} {fingerprint(key)} for {host} "
                f"(first use); recorded in {self.record}"
            )
            self.notices.append(notice)
            log.info("notice: %s", notice)
