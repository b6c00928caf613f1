"""tests/vbox: labctl against real VirtualBox 7.2 (Debian's, in the project's own sandbox).

The management plane only: VMs cannot start on these machines (no kernel driver), which is
itself tested. See tests/vbox/sandbox.py for the sandbox and tests/vbox/fixtures.py for the
fixtures; test ids say ``vboxmanage-real-7.2`` / ``pyvbox-real-7.2``.
"""

from __future__ import annotations

from tests.vbox.fixtures import vbox_sandbox, vbox_vms  # noqa: F401
from tests.vbox.real import driver  # noqa: F401
