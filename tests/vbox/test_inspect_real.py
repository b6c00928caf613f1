"""inspect on real VirtualBox 7.2 output: state and every NIC (attachment, MAC, cable)."""

from __future__ import annotations

import json

from labctl.hypervisor import MachineState
from tests.vbox.real import Driver

EVERY_KIND = (
    "--nic1", "nat",
    "--nic2", "generic", "--nic-generic-drv2", "UDPTunnel",
    "--nic-property2", "dest=127.0.0.1", "--nic-property2", "sport=40001",
    "--nic-property2", "dport=40002",
    "--nic3", "generic", "--nic-generic-drv3", "VDE", "--nic-property3", "network=/run/vde-x",
    "--nic4", "intnet", "--intnet4", "labnet",
    "--nic5", "hostonly", "--host-only-adapter5", "vboxnet0",
    "--nic6", "bridged", "--bridge-adapter6", "eth0",
    "--nic7", "natnetwork", "--nat-network7", "NatNetwork",
    "--nic8", "null",
    "--cableconnected4", "off",
)  # fmt: skip


def test_every_nic_kind_with_mac_and_cable(driver: Driver) -> None:
    driver.vms.create("prod", nic=EVERY_KIND)
    info = driver.vms.info("prod")

    machine = driver.hv.inspect("prod")

    assert machine.state is MachineState.STOPPED
    assert machine.managed is False  # the user's VM: labctl did not create it
    got = {nic.slot: nic for nic in machine.nics}
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7, 8]
    for slot, nic in got.items():
        assert nic.mac == info[f"macaddress{slot}"]
        assert nic.cable is (slot != 4)
    kinds = {slot: (n.attachment, n.driver) for slot, n in got.items()}
    assert kinds == {
        1: ("nat", None), 2: ("generic", "UDPTunnel"), 3: ("generic", "VDE"),
        4: ("intnet", None), 5: ("hostonly", None), 6: ("bridged", None),
        7: ("natnetwork", None), 8: ("null", None),
    }  # fmt: skip
    assert (got[4].network, got[5].network, got[6].network, got[7].network) == (
        "labnet", "vboxnet0", "eth0", "NatNetwork",
    )  # fmt: skip
    # the generic driver's own properties are only in the .vbox file and the API
    if driver.name == "pyvbox":
        assert (got[2].network, got[3].network) == ("127.0.0.1", "/run/vde-x")
    else:
        assert (got[2].network, got[3].network) == (None, None)
    assert got[3].describe() == "generic (VDE)"


def test_disabled_adapters_are_not_listed_and_the_lab_nic_attachment_is_named(
    driver: Driver,
) -> None:
    driver.vms.create("prod")  # NIC 1 only: generic VDE

    assert [n.slot for n in driver.hv.inspect("prod").nics] == [1]
    assert driver.hv.nic_attachment("prod") == "generic"  # 7.2 prints "Generic"
    assert driver.hv.guest_additions("prod") is None  # not running


def test_status_and_doctor_name_the_real_version_the_driver_and_why_vms_cannot_start(
    driver: Driver,
) -> None:
    driver.vms.create("prod")

    status = driver.labctl_json("status")
    assert status["virtualbox"]["version"].startswith("7.2.")
    assert status["virtualbox"]["driver"] == driver.name
    assert status["virtualbox"]["vms_can_start"] is False
    assert {m["machine"]: m["state"] for m in status["machines"]}["prod"] == "stopped"

    done = driver.labctl("doctor", "--json")
    assert done.returncode != 0
    checks = {(c["subject"], c["check"]): c for c in json.loads(done.stdout)["checks"]}
    vbox = checks[("lab", "virtualbox")]
    assert vbox["status"] == "OK" and "7.2." in vbox["detail"] and driver.name in vbox["detail"]
    start = checks[("lab", "vm start")]
    assert start["status"] == "FAIL" and "/dev/vboxdrv" in start["detail"]
    assert "vboxdrv" in start["fix"]
