"""Serve one labctl Hypervisor over stdin/stdout, one JSON request per line (test harness).

Runs inside the VirtualBox sandbox's Python, where vboxapi and pyvbox exist, so that the
host's test session can drive labctl's unmodified pyvbox driver (see ``remote_hv.py``).
Request: ``{"method": NAME, "args": [...], "kwargs": {...}}``. Reply: ``{"ok": VALUE}`` or
``{"error": {"type": CLASS, "message": TEXT, "hint": TEXT}}`` for a LabctlError; anything else
is a bug and ends the server with its traceback on stderr.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from typing import Any

from labctl.errors import LabctlError
from labctl.hypervisor import get_hypervisor
from labctl.profile import Profile


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def main() -> None:
    profile = Profile.model_validate(json.loads(sys.argv[1]))
    hv = get_hypervisor(profile)
    print(json.dumps({"ready": hv.name}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            method = getattr(hv, request["method"])
            reply: dict[str, Any] = {"ok": encode(method(*request["args"], **request["kwargs"]))}
        except LabctlError as exc:
            reply = {
                "error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
            }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
