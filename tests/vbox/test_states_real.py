"""labctl's per-version tables against the constants of the real VirtualBox 7.2 API.

pyvbox 2.1.1 decodes enums with 6.1's numbering; on 7.x a running VM (MachineState 6) reads as
Paused. labctl decodes the numbers itself: here its 7.x table is compared with what Debian's
vboxapi of the running VirtualBox says each number means, and with what pyvbox would say.
"""

from __future__ import annotations

import json

from labctl.hypervisor import MachineState
from labctl.hypervisor.vbox_common import state_from_name
from labctl.hypervisor.vbox_versions import dialect_for
from tests.vbox.sandbox import SandboxRun

READ_CONSTANTS = """
import json, virtualbox, virtualbox.library as lib
vbox = virtualbox.VirtualBox()
constants = virtualbox.Manager().manager.constants
print(json.dumps({
    "version": vbox.version,
    "states": constants.all_values("MachineState"),
    "attachments": constants.all_values("NetworkAttachmentType"),
    "pyvbox_6": str(lib.MachineState(6)),
}))
"""
# the API's enum names as VBoxManage's short state names, where they differ
SHORT = {
    "PoweredOff": "poweroff", "Stuck": "gurumeditation",
    "DeletingSnapshotOnline": "deletingsnapshotlive",
    "DeletingSnapshotPaused": "deletingsnapshotlivepaused",
}  # fmt: skip
ATTACHMENT = {"NAT": "nat", "Internal": "intnet", "NATNetwork": "natnetwork",
              "HostOnly": "hostonly", "HostOnlyNetwork": "hostonlynet"}  # fmt: skip
MARKERS = ("First", "Last", "Null")


def test_state_and_attachment_tables_match_the_running_api(vbox_sandbox: SandboxRun) -> None:
    real = json.loads(vbox_sandbox.run("python3", "-c", READ_CONSTANTS).stdout)
    dialect = dialect_for(real["version"])
    states = {n: v for n, v in real["states"].items() if not n.startswith(MARKERS)}
    assert len(states) == len(dialect.states)
    for name, value in states.items():
        assert dialect.state_name(value) == SHORT.get(name, name.lower()), (name, value)
    attachments = {n: v for n, v in real["attachments"].items() if n != "Null"}
    for name, value in attachments.items():
        assert dialect.attachment_name(value) == ATTACHMENT.get(name, name.lower()), name
    assert dialect.attachment_name(real["attachments"]["Null"]) == "null"
    # the number a running 7.2 VM reports: labctl says running where pyvbox says Paused
    running = real["states"]["Running"]
    assert state_from_name(dialect.state_name(running), "vm") is MachineState.RUNNING
    assert state_from_name(dialect.state_name(real["states"]["Paused"]), "vm") is (
        MachineState.PAUSED
    )
    assert (running, real["pyvbox_6"]) == (6, "Paused")
