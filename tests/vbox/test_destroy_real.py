"""destroy on real VirtualBox 7.2 removes only what labctl made for this lab, disks included."""

from __future__ import annotations

from pathlib import Path

from tests.vbox.real import Driver, make_driver


def disk_path(driver: Driver, name: str) -> Path:
    return driver.run.host_path(driver.vms.info(name)["SATA-0-0"])


def test_destroy_removes_this_labs_clone_and_spares_every_other_vm_and_disk(
    driver: Driver, tmp_path: Path
) -> None:
    vms = driver.vms
    vms.create("prod")
    vms.create("untagged")
    driver.hv.clone("prod", "prod-standby", linked=True)
    other_lab = make_driver(driver.name, driver.run, vms, tmp_path, lab="otherlab")
    other_lab.hv.clone("prod", "other-standby", linked=False)
    standby_dir = disk_path(driver, "prod-standby").parent
    spared = {name: disk_path(driver, name) for name in ("prod", "untagged", "other-standby")}

    done = driver.labctl("destroy", "--yes")

    assert done.returncode == 0, done.stderr
    assert "prod-standby" in done.stdout
    assert not vms.exists("prod-standby")
    assert not standby_dir.exists() or not any(standby_dir.glob("*.vdi"))
    for name, disk in spared.items():
        assert vms.exists(name), name
        assert disk.is_file(), disk
    assert vms.extradata("other-standby", "labctl/lab") == "otherlab"

    again = driver.labctl("destroy", "--yes")
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to destroy")
