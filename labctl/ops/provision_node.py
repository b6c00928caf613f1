"""The steps that provision keepalived on one machine, over one Remote.

``NodeSetup.prepare`` does everything that cannot disturb a running keepalived (package, script
user, check script, a validated candidate config next to the real one); ``commit`` renames the
candidate into place; ``activate`` enables, starts or reloads. ``provision.py`` orders these
across the two nodes of a pair (both prepared before either commits; primary started first).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from dataclasses import dataclass, field

from labctl import keepalived as ka
from labctl.errors import OperationFailed
from labctl.profile import Node, Profile
from labctl.remote import CommandFailed, Remote, Result

log = logging.getLogger(__name__)

CANDIDATE_PATH = f"{ka.KEEPALIVED_DIR}/.keepalived.conf.labctl-new"
BACKUP_PATH = f"{ka.CONF_PATH}.labctl-prev"
CONF_MODE = 0o640
SCRIPT_MODE = 0o755

# $1: the check script ("" when none), $2: keepalived.conf. Few processes: on a busy host
# every fork in every guest counts.
_PROBE = r"""
if command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ]; then echo installed=1
else echo installed=0; fi
if id -u keepalived_script >/dev/null 2>&1; then echo user=1; else echo user=0; fi
systemctl show -p ActiveState -p UnitFileState -p MainPID keepalived 2>/dev/null
stat -c 'stat %u %a %n' /etc/keepalived ${1:+"$1"} 2>/dev/null
sha256sum ${1:+"$1"} "$2" 2>/dev/null
echo ---
ip -o -4 addr show
"""

_AUTH_PASS_LINE = re.compile(r"(auth_pass\s+)\S+")
_AUTH_PASS_VALUE = re.compile(r"auth_pass\s+(\S+)")
# what keepalived's config test prints when it objects to something
CONFIG_TEST_PROBLEM = re.compile(
    r"error|invalid|not valid|unknown|exist|not found|missing|outside|unable|removing|"
    r"bad |fail|cannot|can't|disabl|truncat|warning",
    re.IGNORECASE,
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def redact(text: str, secrets: list[str]) -> str:
    """Mask auth_pass values (any, even ones this profile does not know) and known secrets."""
    return ka.mask(_AUTH_PASS_LINE.sub(rf"\g<1>{ka.MASK}", text), secrets)


@dataclass(frozen=True)
class Probe:
    """What a machine looks like before labctl touches it (one command)."""

    installed: bool
    user_exists: bool
    active: bool
    enabled: bool
    dir_mode: tuple[int, int] | None  # (uid, mode) of /etc/keepalived, None when missing
    script_mode: tuple[int, int] | None  # (uid, mode) of the check script
    pid: int
    addrs: list[ka.IfAddr]
    conf_sha: str = ""  # sha256 of keepalived.conf; "" when missing
    script_sha: str = ""  # sha256 of the check script; "" when missing

    @classmethod
    def parse(cls, output: str, *, script: str, conf: str) -> Probe:
        """Read the probe's output (``script``/``conf``: the paths it was given)."""
        head, _, addrs = output.partition("\n---\n")
        values: dict[str, str] = {}
        modes: dict[str, tuple[int, int]] = {}
        sums: dict[str, str] = {}
        for line in head.splitlines():
            words = line.split()
            if line.startswith("stat ") and len(words) == 4:
                modes[words[3]] = (int(words[1]), int(words[2], 8))
            elif len(words) == 2 and len(words[0]) == 64:
                sums[words[1]] = words[0]
            elif "=" in line:
                key, _, value = line.partition("=")
                values[key] = value.strip()
        pid = values.get("MainPID", "")
        return cls(
            installed=values.get("installed") == "1",
            user_exists=values.get("user") == "1",
            active=values.get("ActiveState") == "active",
            enabled=values.get("UnitFileState") == "enabled",
            dir_mode=modes.get(ka.KEEPALIVED_DIR),
            script_mode=modes.get(script) if script else None,
            pid=int(pid) if pid.isdigit() else 0,
            addrs=ka.parse_ip_addr(addrs),
            conf_sha=sums.get(conf, ""),
            script_sha=sums.get(script, "") if script else "",
        )


def interpret_config_test(result: Result) -> str | None:
    """keepalived 2.2.7's ``-t`` judged by behaviour: None when the file is good, else why not.

    Its exit codes are 0 (good) and 4/5/6 (config, test, security problems); with a vrrp_script
    run by a non-root user it is killed (143) even on a good file, so 143 counts as good only
    when it printed no problem. A missing file also exits 0: the caller checks existence.
    """
    output = "\n".join(s for s in (result.stdout.strip(), result.stderr.strip()) if s)
    problems = [line.strip() for line in output.splitlines() if CONFIG_TEST_PROBLEM.search(line)]
    if result.exit_code == 0 and not problems:
        return None
    if result.exit_code in (143, -1) and not problems:  # -1: killed, no exit status
        return None
    shown = problems or output.splitlines()[-10:] or ["(no output)"]
    return f"keepalived -t exited {result.exit_code}: " + "; ".join(shown[-10:])


@dataclass
class NodeOutcome:
    """What happened on one node; also what the report shows."""

    node: Node
    interface: str | None = None
    installed: bool = False
    user_created: bool = False
    script_changed: bool = False
    config_changed: bool = False
    enabled: bool = False
    started: bool = False
    reloaded: bool = False
    active: bool = False
    pid: int = 0
    diff: str = ""
    planned: list[str] = field(default_factory=list)
    error: str | None = None
    error_code: int = 0  # the exit code of the error (5: unreachable)


class NodeSetup:
    """Provisioning steps for one node over one connection."""

    def __init__(self, profile: Profile, node: Node, remote: Remote, *, dry_run: bool) -> None:
        self.profile = profile
        self.node = node
        self.remote = remote
        self.dry_run = dry_run
        self.outcome = NodeOutcome(node)
        self.probe: Probe | None = None
        self._conf: str = ""
        self._candidate_written = False
        # a running keepalived must reload: its config differs or its script user was missing
        self._needs_reload = False

    @property
    def name(self) -> str:
        return self.node.name

    def _plan(self, action: str) -> bool:
        """Record an action; True when it should really be done (not a dry run)."""
        self.outcome.planned.append(action)
        if not self.dry_run:
            log.info("%s: %s", self.name, action)
        return not self.dry_run

    # -- phase 1: nothing here disturbs a running keepalived -------------------------------

    def prepare(self) -> None:
        """Package, script user, check script, and a validated candidate config."""
        pair = self.profile.pair(self.node.pair)
        rendered_check = ka.render_node(self.profile, self.node.pair, self.node.role).check
        script_path = rendered_check.path if rendered_check else ""
        self.probe = probe = self._probe(script_path)
        self.outcome.pid = probe.pid
        if not probe.installed and self._plan("install keepalived"):
            self._install()
            self.outcome.installed = True
            # the package may have started or enabled the service: look again
            self.probe = probe = self._probe(script_path)
        self._needs_reload = not probe.user_exists
        if not probe.user_exists and self._plan(f"create system user {ka.SCRIPT_USER}"):
            self.remote.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    ka.SCRIPT_USER,
                ]
            )
            self.outcome.user_created = True
        self._ensure_dir(probe)
        if rendered_check is not None:
            self._push_script(rendered_check, probe)

        interface = pair.interface or ka.interface_for(probe.addrs, self.node.address)
        if interface is None:
            found = ", ".join(f"{a.ifname} {a.interface}" for a in probe.addrs) or "none"
            raise OperationFailed(
                f"{self.name}: no interface carries its address {self.node.ip} "
                f"(found: {found}); cannot detect the VRRP interface",
                hint=f"set pairs.{self.node.pair}.interface in the profile",
            )
        self.outcome.interface = interface
        conf = ka.render_node(
            self.profile, self.node.pair, self.node.role, interface=interface, mask_secrets=False
        ).conf
        if probe.conf_sha == _sha256(conf.encode()):
            return  # the common case, decided without reading the file
        current_raw = self.remote.get(ka.CONF_PATH)
        current = current_raw.decode("utf-8", "replace") if current_raw is not None else None
        if current == conf:
            return
        self._conf = conf
        self._needs_reload = True
        self.outcome.diff = self._diff(current, conf)
        if self._plan(f"write {ka.CONF_PATH}"):
            self._write_candidate(conf, interface, probe)
            self.outcome.config_changed = True

    def _install(self) -> None:
        try:
            self.remote.run(
                # VRRP needs none of keepalived's recommends (ipvsadm, perl via SNMP): fewer
                # packages on production machines and a third of the install time
                [
                    "env",
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    "keepalived",
                ]
            )
        except CommandFailed as exc:
            raise OperationFailed(
                f"{self.name}: apt-get install keepalived failed (exit {exc.result.exit_code}): "
                f"{exc.result.stderr_tail() or exc.result.stdout.strip()[-800:]}",
                hint="the machine needs a reachable Debian mirror or keepalived in its apt cache",
            ) from exc

    def _ensure_dir(self, probe: Probe) -> None:
        # keepalived's script security disables a script under a directory that is not
        # root-owned or is group/world-writable
        mode = probe.dir_mode
        if mode is not None and mode[0] == 0 and not mode[1] & 0o022:
            return
        if self._plan(f"make {ka.KEEPALIVED_DIR} root-owned 0755"):
            self.remote.run(
                ["install", "-d", "-m", "0755", "-o", "root", "-g", "root", ka.KEEPALIVED_DIR]
            )

    def _probe(self, script_path: str) -> Probe:
        """One command that tells everything provisioning needs to decide (read-only)."""
        argv = ["sh", "-c", _PROBE, "sh", script_path, ka.CONF_PATH]
        return Probe.parse(self.remote.run(argv).stdout, script=script_path, conf=ka.CONF_PATH)

    def _push_script(self, check: ka.CheckScript, probe: Probe) -> None:
        same = probe.script_sha == _sha256(check.content)
        if same and probe.script_mode == (0, SCRIPT_MODE):
            return
        if self._plan(f"install check script {check.path} (root, 0755)"):
            self.remote.put(check.content, check.path, mode=SCRIPT_MODE)
            self.outcome.script_changed = True

    def _diff(self, current: str | None, new: str) -> str:
        secrets = self.profile.secrets()
        before = redact(current, secrets) if current is not None else ""
        after = redact(new, secrets)
        if current is not None and _AUTH_PASS_VALUE.findall(current) != _AUTH_PASS_VALUE.findall(
            new
        ):
            # both sides are masked: mark the old value so a password change still shows
            before = before.replace(f"auth_pass {ka.MASK}", f"auth_pass {ka.MASK} (old value)")
        return "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"{self.name}:{ka.CONF_PATH}" + ("" if current is not None else " (none)"),
                tofile=f"{self.name}:{ka.CONF_PATH} (labctl)",
            )
        )

    def _write_candidate(self, conf: str, interface: str, probe: Probe) -> None:
        self.remote.put(conf.encode(), CANDIDATE_PATH, mode=CONF_MODE)
        self._candidate_written = True
        # keepalived -t on a missing file exits 0: test existence in the same shell
        result = self.remote.run(
            [
                "sh",
                "-c",
                '[ -s "$1" ] || { echo "labctl: $1 is missing" >&2; exit 90; }; '
                # not exec: when keepalived is killed, sh reports 143 (ssh alone reports no status)
                'keepalived -t -f "$1"; exit $?',
                "sh",
                CANDIDATE_PATH,
            ],
            check=False,
        )
        problem = (
            f"{CANDIDATE_PATH} was not written"
            if result.exit_code == 90
            else interpret_config_test(result)
        )
        problem = problem or self._semantic_problem(conf, interface, probe)
        if problem:
            self.discard()
            raise OperationFailed(
                f"{self.name}: the new keepalived.conf was rejected, nothing changed "
                f"(keepalived keeps its current config): {redact(problem, self.profile.secrets())}"
            )

    def _semantic_problem(self, conf: str, interface: str, probe: Probe) -> str | None:
        """labctl's own checks, for what keepalived 2.2.7's test lets through."""
        interfaces = {a.ifname for a in probe.addrs}
        if interface not in interfaces:
            return (
                f"interface {interface!r} has no IPv4 address on {self.name} "
                f"(interfaces: {', '.join(sorted(interfaces)) or 'none'})"
            )
        if f"interface {interface}\n" not in conf or "vrrp_instance" not in conf:
            return "the rendered file has no vrrp_instance on the VRRP interface"
        return None

    # -- phase 2 ----------------------------------------------------------------------------

    def commit(self) -> None:
        """Rename the validated candidate into place, keeping the previous file as a backup."""
        if not self._candidate_written:
            return
        self.remote.run(
            [
                "sh",
                "-c",
                '[ ! -e "$2" ] || cp -p -- "$2" "$3"; mv -f -- "$1" "$2"',
                "sh",
                CANDIDATE_PATH,
                ka.CONF_PATH,
                BACKUP_PATH,
            ]
        )
        self._candidate_written = False

    def discard(self) -> None:
        """Remove a candidate that will not be used (the other node failed, or it was bad)."""
        if self._candidate_written:
            self.remote.run(["rm", "-f", "--", CANDIDATE_PATH], check=False)
            self._candidate_written = False

    def enable(self) -> None:
        """Enable the service for boot (it does not start it, so order does not matter)."""
        probe = self.probe
        assert probe is not None
        if not probe.enabled and self._plan("enable keepalived"):
            # --no-reload: the symlink is all boot needs; a daemon-reload costs ~0.3 s
            self.remote.run(["systemctl", "enable", "--no-reload", "--quiet", "keepalived"])
            self.outcome.enabled = True

    def activate(self) -> None:
        """Start keepalived when stopped, reload it when its config changed."""
        probe = self.probe
        assert probe is not None
        if not probe.active:
            if self._plan("start keepalived"):
                self._systemctl("start")
                self.outcome.started = True
        elif self._needs_reload and self._plan("reload keepalived"):
            # reload keeps the VIP where it is; a restart on the master would move it twice
            self._systemctl("reload")
            self.outcome.reloaded = True

    def _systemctl(self, verb: str) -> None:
        try:
            self.remote.run(["systemctl", verb, "keepalived"])
        except CommandFailed as exc:
            journal = self.remote.run(
                ["journalctl", "-u", "keepalived", "-n", "12", "--no-pager", "-o", "cat"],
                check=False,
            ).stdout.strip()
            raise OperationFailed(
                f"{self.name}: systemctl {verb} keepalived failed: {exc.result.stderr_tail()}"
                + (f"\n{redact(journal, self.profile.secrets())}" if journal else "")
            ) from exc

    @property
    def touched(self) -> bool:
        """Whether this run changed anything on the node."""
        o = self.outcome
        return any(
            (
                o.installed,
                o.user_created,
                o.script_changed,
                o.config_changed,
                o.enabled,
                o.started,
                o.reloaded,
            )
        )

    def observe(self) -> None:
        """Record whether keepalived runs now, and its PID."""
        if not self.touched and self.probe is not None:
            # nothing was done here: what the probe saw a moment ago still holds
            self.outcome.active = self.probe.active
            self.outcome.pid = self.probe.pid
            return
        out = self.remote.run(
            ["systemctl", "show", "-p", "ActiveState", "-p", "MainPID", "keepalived"],
            check=False,
        ).stdout
        values = dict(line.partition("=")[::2] for line in out.splitlines())
        self.outcome.active = values.get("ActiveState", "").strip() == "active"
        pid = values.get("MainPID", "").strip()
        self.outcome.pid = int(pid) if pid.isdigit() else 0
