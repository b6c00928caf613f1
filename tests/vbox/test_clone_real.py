"""The clone sequence up to the first start, on real VirtualBox 7.2, through both drivers.

What the seed's user does by hand (snapshot, clone, new MACs, cable out before the clone
touches the network), checked with the real VBoxManage from outside labctl. The first start
itself cannot happen on these machines (no kernel driver): ``labctl clone`` then refuses with
exit 4 before making anything, which is asserted too.
"""

from __future__ import annotations

import re

from tests.vbox.real import LAB, Driver

TWO_NICS = (
    "--nic1", "generic", "--nictype1", "82540EM", "--nic-generic-drv1", "VDE",
    "--nic-property1", "network=/run/labctl-vde-test", "--nic2", "nat",
)  # fmt: skip


def snapshots(driver: Driver, name: str) -> list[str]:
    info = driver.vms.info(name)
    return [v for k, v in info.items() if k.startswith("SnapshotName")]


def disk_of(driver: Driver, name: str) -> str:
    return driver.vms.info(name)["SATA-0-0"]


def test_linked_clone_takes_the_base_snapshot_once_and_gets_its_own_identity(
    driver: Driver,
) -> None:
    driver.vms.create("prod", nic=TWO_NICS)
    prod = driver.vms.info("prod")
    assert snapshots(driver, "prod") == []

    driver.hv.clone("prod", "prod-standby", linked=True)
    driver.hv.clone("prod", "second-standby", linked=True)

    assert snapshots(driver, "prod") == ["labctl-base"]  # taken when missing, then reused
    for clone in ("prod-standby", "second-standby"):
        info = driver.vms.info(clone)
        assert info["VMState"] == "poweroff"
        # a new MAC on every NIC, the lab NIC's cable out, the other NIC as it was
        assert info["macaddress1"] != prod["macaddress1"]
        assert info["macaddress2"] != prod["macaddress2"]
        assert (info["nic1"], info["generic1"]) == ("Generic", "VDE")
        assert info["cableconnected1"] == "off"
        assert (info["nic2"], info["cableconnected2"]) == ("nat", "on")
        assert driver.vms.extradata(clone, "labctl/lab") == LAB
        # a differencing disk on top of production's snapshot
        medium = driver.run.manage("showmediuminfo", "disk", disk_of(driver, clone)).stdout
        assert re.search(r"^Parent UUID:\s+[0-9a-f-]{36}$", medium, re.M), medium
    assert (
        driver.vms.info("second-standby")["macaddress1"]
        != driver.vms.info("prod-standby")["macaddress1"]
    )
    listed = {m.name for m in driver.hv.list()}
    assert listed == {"prod-standby", "second-standby"}  # registered, and only labctl's
    # production itself: untouched but for the snapshot
    after = driver.vms.info("prod")
    assert {k: after[k] for k in ("macaddress1", "macaddress2", "cableconnected1", "VMState")} == {
        k: prod[k] for k in ("macaddress1", "macaddress2", "cableconnected1", "VMState")
    }
    assert driver.vms.extradata("prod", "labctl/lab") is None


def test_full_clone_copies_the_disk_and_takes_no_snapshot(driver: Driver) -> None:
    driver.vms.create("prod")

    driver.hv.clone("prod", "prod-standby", linked=False)

    assert snapshots(driver, "prod") == []
    standby_disk = disk_of(driver, "prod-standby")
    assert standby_disk != disk_of(driver, "prod")
    medium = driver.run.manage("showmediuminfo", "disk", standby_disk).stdout
    # a disk of its own, not a child of production's
    assert re.search(r"^Parent UUID:\s+base$", medium, re.M), medium
    assert driver.vms.info("prod-standby")["cableconnected1"] == "off"
    assert driver.hv.inspect("prod-standby").managed


def test_labctl_clone_refuses_before_making_anything_when_vms_cannot_start(
    driver: Driver,
) -> None:
    driver.vms.create("prod")

    done = driver.labctl("clone", "prod", "--linked")

    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "kernel driver" in lines[0]
    assert any(line.startswith("hint: ") and "vboxdrv" in line for line in lines)
    assert "Traceback" not in done.stderr
    assert not driver.vms.exists("prod-standby")
    assert snapshots(driver, "prod") == []


def test_labctl_up_refuses_when_vms_cannot_start(driver: Driver) -> None:
    driver.vms.create("prod")

    done = driver.labctl("up", "prod")

    assert done.returncode == 4, done.stderr
    assert "kernel driver" in done.stderr and "Traceback" not in done.stderr
    assert driver.vms.info("prod")["VMState"] == "poweroff"


def test_clone_gives_the_standby_its_own_serial_log_file(driver: Driver) -> None:
    """clonevm copies the UART's file path: production and its standby would write one serial
    log. labctl points the clone's at a file of its own, beside production's (which is kept)."""
    serial = driver.run.host_path("/root/serial")
    serial.mkdir(exist_ok=True)
    driver.vms.create("prod", nic=(*TWO_NICS, "--uart1", "0x3F8", "4",
                                   "--uart-mode1", "file", "/root/serial/prod.log"))  # fmt: skip

    driver.hv.clone("prod", "prod-standby", linked=True)

    assert driver.vms.info("prod")["uartmode1"] == "file,/root/serial/prod.log"
    assert driver.vms.info("prod-standby")["uartmode1"] == "file,/root/serial/prod-standby.log"
    assert driver.vms.info("prod-standby")["uart1"] == driver.vms.info("prod")["uart1"]
