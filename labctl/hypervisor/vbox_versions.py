"""The one place that knows how VirtualBox API versions differ, for the pyvbox driver.

pyvbox 2.1.1 is generated from the VirtualBox 6.1 API. Against 7.x it still works for most
calls, but its enums decode with 6.1's numbering (7.0 inserted MachineState.AbortedSaved = 5,
so a running VM reads as "Paused") and some methods changed their parameters
(IVirtualBox.createMachine gained encryption parameters in 7.0 and a platform architecture in
7.1). The driver therefore reads the API's numeric values and decodes them with the table of
the *running* API version, and calls the changed methods through the raw interface object.
Vagrant keeps one driver class per VirtualBox version for the same reason; a table is enough
here. Attributes that 7.0 moved (chipsetType, firmwareType, BIOSSettings: now under
IMachine.platform / firmwareSettings) are not used by labctl at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from labctl.errors import BackendUnavailable

# IMachine.state -> VBoxManage's short state name (what labctl's state_from_name reads).
_STATES_6_1: Mapping[int, str] = {
    1: "poweroff", 2: "saved", 3: "teleported", 4: "aborted", 5: "running", 6: "paused",
    7: "gurumeditation", 8: "teleporting", 9: "livesnapshotting", 10: "starting",
    11: "stopping", 12: "saving", 13: "restoring", 14: "teleportingpausedvm",
    15: "teleportingin", 16: "deletingsnapshotlive", 17: "deletingsnapshotlivepaused",
    18: "onlinesnapshotting", 19: "restoringsnapshot", 20: "deletingsnapshot",
    21: "settingup", 22: "snapshotting",
}  # fmt: skip
# 7.0 inserted AbortedSaved = 5 and shifted everything after it by one.
_STATES_7: Mapping[int, str] = {
    1: "poweroff", 2: "saved", 3: "teleported", 4: "aborted", 5: "abortedsaved",
    **{value + 1: name for value, name in _STATES_6_1.items() if value >= 5},
}  # fmt: skip

# INetworkAdapter.attachmentType, named as VBoxManage's modifyvm --nicN names it.
_ATTACHMENTS_6_1: Mapping[int, str] = {
    0: "null", 1: "nat", 2: "bridged", 3: "intnet", 4: "hostonly", 5: "generic",
    6: "natnetwork", 7: "cloud",
}  # fmt: skip
_ATTACHMENTS_7: Mapping[int, str] = {**_ATTACHMENTS_6_1, 8: "hostonlynet"}

SUPPORTED = "6.1 and 7.0-7.2"


@dataclass(frozen=True)
class ApiDialect:
    """How one VirtualBox API version encodes what labctl reads and calls.

    Attributes:
        version: the VirtualBox version string as the API reports it (``7.2.22_Debian``).
        major, minor: its first two numbers.
        states: IMachine.state value -> VBoxManage short state name.
        attachments: NetworkAttachmentType value -> VBoxManage attachment name.
    """

    version: str
    major: int
    minor: int
    states: Mapping[int, str]
    attachments: Mapping[int, str]

    def state_name(self, value: int) -> str:
        return self.states.get(value, f"#{value}")

    def attachment_name(self, value: int) -> str:
        return self.attachments.get(value, f"unknown({value})")

    def create_machine_args(
        self, settings_file: str, name: str, os_type_id: str, *, platform: int | None
    ) -> tuple[object, ...]:
        """The positional arguments of IVirtualBox.createMachine for this version.

        6.1: (settingsFile, name, groups, osTypeId, flags); 7.0 adds cipher, passwordId,
        password (empty = not encrypted); 7.1 adds the platform architecture after the name.
        """
        if self.major < 7:
            return (settings_file, name, [], os_type_id, "")
        head: tuple[object, ...] = (settings_file, name)
        if (self.major, self.minor) >= (7, 1):
            head += (platform if platform is not None else 1,)  # PlatformArchitecture_x86
        return (*head, [], os_type_id, "", "", "", "")

    def process_create_args(self, argv: list[str], timeout_ms: int) -> tuple[object, ...]:
        """The positional arguments of IGuestSession.processCreateEx for this version: run
        ``argv`` (argv[0] included, as the API wants), wait for stdout and stderr.

        6.1: (executable, arguments, environmentChanges, flags, timeoutMS, priority, affinity);
        7.0 adds the working directory after the arguments ("" = the user's home).
        """
        flags = [16, 32]  # ProcessCreateFlag WaitForStdOut, WaitForStdErr
        priority = 1  # ProcessPriority Default
        if self.major < 7:
            return (argv[0], argv, [], flags, timeout_ms, priority, [])
        return (argv[0], argv, "", [], flags, timeout_ms, priority, [])

    @property
    def native(self) -> bool:
        """True when pyvbox's own wrappers match this API (6.1)."""
        return self.major < 7


def dialect_for(version: str) -> ApiDialect:
    """The dialect of the VirtualBox API reporting ``version``; BackendUnavailable otherwise."""
    m = re.match(r"^(\d+)\.(\d+)", version)
    if m is None:
        raise BackendUnavailable(f"pyvbox: cannot read the VirtualBox version {version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) == (6, 1):
        return ApiDialect(version, major, minor, _STATES_6_1, _ATTACHMENTS_6_1)
    if major == 7 and minor <= 2:
        return ApiDialect(version, major, minor, _STATES_7, _ATTACHMENTS_7)
    raise BackendUnavailable(
        f"the pyvbox driver knows the VirtualBox API of {SUPPORTED}; this host runs {version}",
        hint='set driver = "vboxmanage" under [lab.virtualbox]',
    )
