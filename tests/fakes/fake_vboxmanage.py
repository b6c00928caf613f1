#!/usr/bin/env -S python3 -I -S
"""FAKE VBoxManage: VirtualBox cannot run here, so this script plays it for tests.

It emulates the subset of the VBoxManage CLI labctl uses, with the real output formats
(``showvminfo --machinereadable`` key="value" lines, ``list vms`` lines, ``getextradata``'s
"Value: ..." / "No value set!"), the real error lines (``VBoxManage: error: ...`` with
Details/Context) and exit codes (1 for errors, 2 for syntax errors, guestcontrol's mapping of
guest exit codes: 1..93 -> 33..125, 94 and above -> 126). State lives in the JSON file named by
$FAKE_VBOX_STATE (see vbox_world.py); with $FAKE_VBOX_LOG set, each argv is
appended to that file as a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Run as a script: make the repository importable so the fake shares tests.fakes.vbox_world.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakes.vbox_world import (
    STOPPED_STATES,
    GuestError,
    Injected,
    InvalidState,
    Locked,
    NotFound,
    World,
    opened,
)

PROGRESS = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%"
EXEC_MAPPED_FIRST = 33
EXEC_MAPPED_LAST = 125
EXEC_TIMEOUT = 20


class Fail(Exception):
    def __init__(self, lines: Sequence[str], code: int = 1) -> None:
        super().__init__(lines)
        self.lines = list(lines)
        self.code = code


def error(message: str, code_name: str, hresult: str, context: str, source: str) -> Fail:
    return Fail(
        [
            f"VBoxManage: error: {message}",
            f"VBoxManage: error: Details: code {code_name} ({hresult}), component MachineWrap, "
            "interface IMachine, callee nsISupports",
            f'VBoxManage: error: Context: "{context}" at line 1 of file {source}',
        ]
    )


def not_found(name: str, source: str) -> Fail:
    return Fail(
        [
            f"VBoxManage: error: Could not find a registered machine named '{name}'",
            "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component "
            "VirtualBoxWrap, interface IVirtualBox, callee nsISupports",
            'VBoxManage: error: Context: "FindMachine(Bstr(VMNameOrUuid).raw(), '
            f'machine.asOutParam())" at line 1 of file {source}',
        ]
    )


def syntax(message: str) -> Fail:
    return Fail([f"VBoxManage: error: {message}", "Usage: see 'VBoxManage help'"], code=2)


def showvminfo(world: World, args: list[str]) -> str:
    if len(args) != 2 or args[1] != "--machinereadable":
        raise syntax("labctl's fake only supports showvminfo NAME --machinereadable")
    try:
        vm = world.observe(args[0])
    except NotFound:
        raise not_found(args[0], "VBoxManageInfo.cpp") from None
    if vm.state in STOPPED_STATES and vm.lock_lingers and vm.locked_reads == vm.lock_lingers - 1:
        # real 7.2, the first read after a power-off: the VM process is between states
        raise error(
            "Failed to get a console object from the direct session "
            "(VBOX_E_INVALID_OBJECT_STATE)",
            "VBOX_E_VM_ERROR", "0x80bb0003", "LockMachine(a->session, LockType_Shared)",
            "VBoxManageInfo.cpp",
        )  # fmt: skip
    out = [
        f'name="{vm.name}"',
        'groups="/"',
        'ostype="Debian (64-bit)"',
        f'UUID="{vm.uuid}"',
        f'CfgFile="{world.settings_file(vm.name)}"',
        "memory=1024",
        "cpus=1",
        f'VMState="{vm.state}"',
        'VMStateChangeTime="2026-11-25T03:00:00.000000000"',
    ]
    if vm.description:
        out.append(f'description="{vm.description}"')
    for slot in range(1, 9):
        nic = vm.nics.get(str(slot))
        if nic is None:
            out.append(f'nic{slot}="none"')
            continue
        if nic.attachment == "nat":
            out.append(f'natnet{slot}="nat"')
        elif nic.attachment == "intnet":
            out.append(f'intnet{slot}="intnet"')
        elif nic.attachment == "hostonly":
            out.append(f'hostonlyadapter{slot}="vboxnet0"')
        elif nic.attachment == "bridged":
            out.append(f'bridgeadapter{slot}="eth0"')
        running = vm.state not in {"poweroff", "saved", "aborted", "teleported"}
        connected = nic.live_cable if running else nic.cable
        out += [
            f'macaddress{slot}="{nic.mac}"',
            f'cableconnected{slot}="{"on" if connected else "off"}"',
            # real 7.2 capitalises this one attachment name only (checked in tests/vbox)
            f'nic{slot}="{"Generic" if nic.attachment == "generic" else nic.attachment}"',
            f'nictype{slot}="82540EM"',
            f'nicspeed{slot}="0"',
        ]
    if vm.locked:  # real 7.x prints the session's name only while it is not unlocked
        out.append('SessionName="headless"')
    for slot in range(1, 5):
        if str(slot) in vm.serial_files:  # real 7.2's lines for a UART writing a file
            out += [f'uart{slot}="0x03f8,4"', f'uartmode{slot}="file,{vm.serial_files[str(slot)]}"',
                    f'uarttype{slot}="16550A"']  # fmt: skip
        else:
            out.append(f'uart{slot}="off"')
    running = vm.state in {"running", "paused"}
    if running and vm.guest_additions:
        out += ["GuestAdditionsRunLevel=2", f'GuestAdditionsVersion="{vm.guest_additions}"']
    else:
        out.append("GuestAdditionsRunLevel=0")
    for i, snap in enumerate(vm.snapshots):
        suffix = "" if i == 0 else "-1" * i
        out += [f'SnapshotName{suffix}="{snap}"', f'SnapshotUUID{suffix}="snap-{i}-{vm.uuid}"']
    if vm.snapshots:
        last = "" if len(vm.snapshots) == 1 else "-1" * (len(vm.snapshots) - 1)
        out += [
            f'CurrentSnapshotName="{vm.snapshots[-1]}"',
            f'CurrentSnapshotNode="SnapshotName{last}"',
        ]
    return "\n".join(out) + "\n"


def list_cmd(world: World, args: list[str]) -> str:
    if args == ["vms"]:
        return "".join(f'"{vm.name}" {{{vm.uuid}}}\n' for vm in world.machines.values())
    if args == ["runningvms"]:
        return "".join(
            f'"{vm.name}" {{{vm.uuid}}}\n'
            for vm in world.machines.values()
            if vm.state in {"running", "paused"}
        )
    raise syntax(f"Invalid parameter '{' '.join(args)}'")


def getextradata(world: World, args: list[str]) -> str:
    if len(args) != 2:
        raise syntax("Incorrect number of parameters")
    try:
        vm = world.find(args[0])
    except NotFound:
        raise not_found(args[0], "VBoxManageMisc.cpp") from None
    value = vm.extradata.get(args[1])
    return "No value set!\n" if value is None else f"Value: {value}\n"


def setextradata(world: World, args: list[str]) -> str:
    if len(args) not in (2, 3):
        raise syntax("Incorrect number of parameters")
    try:
        world.set_extradata(args[0], args[1], args[2] if len(args) == 3 else None)
    except NotFound:
        raise not_found(args[0], "VBoxManageMisc.cpp") from None
    return ""


def clonevm(world: World, args: list[str]) -> str:
    source, rest = args[0], args[1:]
    target = snapshot = None
    register = linked = False
    i = 0
    while i < len(rest):
        opt = rest[i]
        if opt == "--name":
            target, i = rest[i + 1], i + 2
        elif opt == "--snapshot":
            snapshot, i = rest[i + 1], i + 2
        elif opt == "--mode":
            if rest[i + 1] not in ("machine", "machineandchildren", "all"):
                raise syntax(f"Invalid clone mode '{rest[i + 1]}'")
            i += 2
        elif opt == "--options":
            linked, i = "link" in rest[i + 1].split(","), i + 2
        elif opt == "--register":
            register, i = True, i + 1
        else:
            raise syntax(f"Invalid parameter '{opt}'")
    if target is None:
        raise syntax("--name is required by labctl's fake")
    try:
        world.clone(source, target, snapshot=snapshot, linked=linked)
    except NotFound as exc:
        if str(exc) == source:
            raise not_found(source, "VBoxManageMisc.cpp") from None
        raise error(
            str(exc),
            "VBOX_E_OBJECT_NOT_FOUND",
            "0x80bb0001",
            "FindSnapshot(Bstr(pszSnapshotName).raw(), srcSnapshot.asOutParam())",
            "VBoxManageMisc.cpp",
        ) from None
    except InvalidState as exc:
        raise error(
            str(exc), "VBOX_E_FILE_ERROR", "0x80bb0004", "CreateMachine(...)", "VBoxManageMisc.cpp"
        ) from None
    if not register:
        # An unregistered clone would be invisible to every later command; labctl always registers.
        del world.machines[target]
    print(PROGRESS, file=sys.stderr)
    return f'Machine has been successfully cloned as "{target}"\n'


def snapshot_cmd(world: World, args: list[str]) -> str:
    if len(args) < 3 or args[1] != "take":
        raise syntax("labctl's fake only supports snapshot NAME take SNAPSHOT")
    try:
        world.take_snapshot(args[0], args[2])
    except NotFound:
        raise not_found(args[0], "VBoxManageSnapshot.cpp") from None
    print(PROGRESS, file=sys.stderr)
    return "Snapshot taken. UUID: 6d3b2c58-0000-4000-8000-000000000001\n"


def startvm(world: World, args: list[str]) -> str:
    name = args[0]
    if args[1:] != ["--type", "headless"]:
        raise syntax("labctl's fake only supports startvm NAME --type headless")
    try:
        world.start(name)
    except NotFound:
        raise not_found(name, "VBoxManageMisc.cpp") from None
    except Locked as exc:
        raise error(
            str(exc),
            "VBOX_E_INVALID_OBJECT_STATE",
            "0x80bb0007",
            "LaunchVMProcess(a->session, sessionType.raw(), ComSafeArrayAsInParam(aBstrEnv), "
            "progress.asOutParam())",
            "VBoxManageMisc.cpp",
        ) from None
    return f'Waiting for VM "{name}" to power on...\nVM "{name}" has been successfully started.\n'


def controlvm(world: World, args: list[str]) -> str:
    if len(args) < 2:
        raise syntax("Not enough parameters")
    name, action = args[0], args[1]
    try:
        if action == "poweroff":
            world.power_off(name)
            print(PROGRESS, file=sys.stderr)
        elif action == "acpipowerbutton":
            world.acpi(name)
        elif action == "pause":
            world.pause(name)
        elif action == "savestate":
            world.save_state(name)
        elif action == "resume":
            world.resume(name)
        elif action.startswith("setlinkstate") and action[12:].isdigit() and len(args) == 3:
            if args[2] not in ("on", "off"):
                raise syntax(f"Invalid link state '{args[2]}'")
            world.set_live_cable(name, action[12:], args[2] == "on")
        else:
            raise syntax(f"Invalid parameter '{action}'")
    except NotFound:
        raise not_found(name, "VBoxManageControlVM.cpp") from None
    except InvalidState as exc:
        raise Fail([f"VBoxManage: error: {exc}"]) from None
    return ""


def discardstate(world: World, args: list[str]) -> str:
    if len(args) != 1:
        raise syntax("Incorrect number of parameters")
    try:
        world.discard_state(args[0])
    except NotFound:
        raise not_found(args[0], "VBoxManageMisc.cpp") from None
    except InvalidState as exc:
        raise Fail([f"VBoxManage: error: {exc}"]) from None
    return ""


def modifyvm(world: World, args: list[str]) -> str:
    name, rest = args[0], args[1:]
    cables: list[tuple[str, bool]] = []
    serials: list[tuple[str, str]] = []
    while rest:
        option = rest.pop(0)
        if option.startswith("--cableconnected") and rest and rest[0] in ("on", "off"):
            cables.append((option.removeprefix("--cableconnected"), rest.pop(0) == "on"))
        elif option.startswith("--uartmode") and len(rest) >= 2 and rest[0] == "file":
            serials.append((option.removeprefix("--uartmode"), rest[1]))
            del rest[:2]
        else:
            raise syntax("labctl's fake only supports modifyvm NAME [--cableconnectedN on|off] "
                         "[--uartmodeN file PATH]...")  # fmt: skip
    try:
        for slot, connected in cables:
            world.set_saved_cable(name, slot, connected)
        for slot, path in serials:
            world.set_serial_file(name, slot, path)
    except NotFound:
        raise not_found(name, "VBoxManageModifyVM.cpp") from None
    except Locked as exc:
        raise error(
            str(exc),
            "VBOX_E_INVALID_OBJECT_STATE",
            "0x80bb0007",
            "LockMachine(a->session, LockType_Write)",
            "VBoxManageModifyVM.cpp",
        ) from None
    return ""


def unregistervm(world: World, args: list[str]) -> str:
    if len(args) != 2 or args[1] != "--delete":
        raise syntax("labctl's fake only supports unregistervm NAME --delete")
    try:
        world.unregister_delete(args[0])
    except NotFound:
        raise not_found(args[0], "VBoxManageMisc.cpp") from None
    except Locked as exc:
        raise error(
            str(exc),
            "VBOX_E_INVALID_OBJECT_STATE",
            "0x80bb0007",
            "Unregister(CleanupMode_DetachAllReturnHardDisksOnly, ComSafeArrayAsOutParam(aMedia))",
            "VBoxManageMisc.cpp",
        ) from None
    print(PROGRESS, file=sys.stderr)
    return ""


def guestcontrol(world: World, args: list[str]) -> tuple[str, str, int]:
    name, sub, rest = args[0], args[1], args[2:]
    if sub != "run":
        raise syntax(f"Unknown sub-command: '{sub}'")
    if "--" not in rest:
        raise syntax("No command to execute specified!")
    cut = rest.index("--")
    opts, argv = rest[:cut], rest[cut + 1 :]
    user = password = ""
    timeout_ms = 0
    i = 0
    while i < len(opts):
        opt = opts[i]
        if opt in ("--wait-stdout", "--wait-stderr", "--no-wait-stdout", "--no-wait-stderr"):
            i += 1
            continue
        value = opts[i + 1]
        if opt == "--username":
            user = value
        elif opt == "--password":
            password = value
        elif opt == "--passwordfile":
            password = Path(value).read_text().splitlines()[0] if Path(value).exists() else ""
        elif opt == "--timeout":
            timeout_ms = int(value)
        elif opt != "--exe":
            raise syntax(f"Unknown option: {opt}")
        i += 2
    vm = world.machines.get(name)
    if vm is not None and vm.state == "running" and not vm.guest_session_starts:
        # VBoxManageGuestCtrl.cpp waits a fixed 30 s for the guest session to start
        raise Fail(["VBoxManage: error: Error starting guest session (current status is: "
                    "starting)"])  # fmt: skip
    try:
        code, out, err = world.run_in_guest(name, user, password, argv, timeout_ms / 1000 or None)
    except NotFound:
        raise not_found(name, "VBoxManageGuestCtrl.cpp") from None
    except (InvalidState, GuestError) as exc:
        raise Fail([f"VBoxManage: error: {exc}"]) from None
    except TimeoutError:
        return "", "VBoxManage: error: Process execution aborted: timed out\n", EXEC_TIMEOUT
    if code == 0:
        return out, err, 0
    mapped = code + EXEC_MAPPED_FIRST - 1
    return out, err, mapped if mapped <= EXEC_MAPPED_LAST else EXEC_MAPPED_LAST + 1


COMMANDS = {
    "showvminfo": showvminfo,
    "list": list_cmd,
    "getextradata": getextradata,
    "setextradata": setextradata,
    "clonevm": clonevm,
    "snapshot": snapshot_cmd,
    "startvm": startvm,
    "controlvm": controlvm,
    "modifyvm": modifyvm,
    "discardstate": discardstate,
    "unregistervm": unregistervm,
}


def main(argv: list[str]) -> int:
    state = os.environ.get("FAKE_VBOX_STATE")
    if not state:
        print(
            "fake VBoxManage: set FAKE_VBOX_STATE to the fake VirtualBox's state file",
            file=sys.stderr,
        )
        return 1
    log = os.environ.get("FAKE_VBOX_LOG")
    if log:  # lets tests see exactly which command lines labctl ran
        with open(log, "a") as calls:
            calls.write(json.dumps(argv) + "\n")
    with opened(Path(state)) as world:
        if argv in (["--version"], ["-v"]):
            print(world.version)
            return 0
        if not argv:
            print("Usage: VBoxManage <command> ...", file=sys.stderr)
            return 2
        command, args = argv[0], argv[1:]
        try:
            if command not in ("clonevm", "modifyvm", "setextradata", "startvm", "snapshot"):
                world.maybe_fail(command)  # the others fail inside the world, mid-operation
            if command == "guestcontrol":
                out, err, code = guestcontrol(world, args)
                sys.stdout.write(out)
                sys.stderr.write(err)
                return code
            if command not in COMMANDS:
                raise syntax(f"Invalid command '{command}'")
            sys.stdout.write(COMMANDS[command](world, args))
            return 0
        except Injected as exc:
            print(f"VBoxManage: error: {exc}", file=sys.stderr)
            return 1
        except Fail as exc:
            print("\n".join(exc.lines), file=sys.stderr)
            return exc.code
        except IndexError:
            print(syntax("Not enough parameters").lines[0], file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
