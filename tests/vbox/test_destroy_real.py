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


def test_destroy_of_a_clone_with_a_dvd_attached_removes_it_and_spares_the_iso(
    driver: Driver,
) -> None:
    """Users keep an installer ISO in the DVD drive; the clone has it too. The disk walk of
    destroy reads hard disks only (real 7.2: opening the ISO as a hard disk is
    VBOX_E_OBJECT_NOT_FOUND, which once failed destroy -- and a failed clone's clean-up)."""
    vms = driver.vms
    vms.create("prod", dvd=True)
    driver.hv.clone("prod", "prod-standby", linked=True)
    iso = driver.run.host_path(vms.info("prod")["IDE-0-0"])
    assert vms.info("prod-standby")["IDE-0-0"] == driver.run.inside_path(iso)

    done = driver.labctl("destroy", "--yes")

    assert done.returncode == 0, done.stderr
    assert not vms.exists("prod-standby") and vms.exists("prod")
    assert iso.is_file() and disk_path(driver, "prod").is_file()
