"""Loading a profile: TOML -> validated Profile, every problem at once with its key path.

Structural problems (types, unknown keys, ranges) come from pydantic and are rewritten into
``key.path: message`` lines; cross-key rules (unique VRIDs, VIP placement, ...) run after.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from labctl.errors import ProfileError
from labctl.profile import ADVERT_INT_V3_MAX, PairSpec, Profile, check_hostname, host_ip


def resolve_path(ref: str | None, cwd: Path | None = None) -> Path:
    """Turn ``-p NAME|PATH`` (or LABCTL_PROFILE, or ./labctl.toml) into a file path."""
    cwd = cwd or Path.cwd()
    ref = ref or os.environ.get("LABCTL_PROFILE") or None
    if ref is None:
        return cwd / "labctl.toml"
    candidate = Path(ref).expanduser()
    if "/" in ref or ref.endswith(".toml") or candidate.is_file():
        return candidate if candidate.is_absolute() else cwd / candidate
    for base in (cwd / "profiles", Path(__file__).resolve().parent.parent / "profiles"):
        if (base / f"{ref}.toml").is_file():
            return base / f"{ref}.toml"
    return cwd / "profiles" / f"{ref}.toml"


def load(ref: str | None = None, *, check_env: bool = False) -> Profile:
    """Load and fully validate a profile; raise ProfileError listing every problem."""
    path = resolve_path(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"profile not found: {path}",
            hint="pass -p NAME (profiles/NAME.toml) or -p PATH, or set LABCTL_PROFILE",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    return parse(text, path=path, check_env=check_env)


def parse(text: str, *, path: Path | None = None, check_env: bool = False) -> Profile:
    where = str(path) if path else "profile"
    if not text.strip():
        raise ProfileError(f"{where}: the profile is empty", hint="start from profiles/it490.toml")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{where}: invalid TOML: {exc}") from None
    if not data:
        raise ProfileError(
            f"{where}: the profile has no keys", hint="start from profiles/it490.toml"
        )
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation(exc, data)) from None
    profile._path = path
    problems = list(semantic_problems(profile, check_env=check_env))
    if problems:
        raise ProfileError(problems)
    return profile


_TYPE_NAMES = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "float_type": "a number",
    "int_from_float": "an integer",
}


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    if isinstance(value, dict):
        return "table"
    return names.get(type(value), type(value).__name__)


def _format_validation(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        key = _key_path(loc)
        kind = err["type"]
        if kind == "missing":
            message = "required key is missing"
        elif kind == "extra_forbidden":
            message = "unknown key" + _suggest(loc, data)
        elif kind in _TYPE_NAMES or kind.endswith("_type"):
            expected = _TYPE_NAMES.get(kind, kind.removesuffix("_type"))
            message = f"must be {expected}, got {_describe(err.get('input'))}"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected}, got {err.get('input')!r}"
        elif kind == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
        else:
            message = err["msg"]
        problems.append(f"{key}: {message}" if key else message)
    return problems


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part.startswith("function-") or part in {"str", "int", "float", "none", "bool"}
    )


def _key_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(loc: list[Any], data: dict[str, Any]) -> str:
    """A 'did you mean' for a typo'd key, from the fields the enclosing model allows."""
    model: Any = Profile
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            # a dict key (machine or pair name): descend into the dict's value model
            continue
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [a for a in (annotation, *args) if hasattr(a, "model_fields")]
        if candidates:
            model = candidates[0]
        elif args and hasattr(args[-1], "model_fields"):
            model = args[-1]
    known = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def semantic_problems(profile: Profile, *, check_env: bool = False) -> Iterator[str]:
    """Cross-key rules pydantic cannot see key by key."""
    lab_net = profile.lab.nspawn.network if profile.lab.backend == "nspawn" else None
    if lab_net is not None:
        gw = host_ip(profile.lab.nspawn.gateway)
        if gw not in lab_net:
            yield f"lab.nspawn.gateway: {gw} is outside lab.nspawn.subnet {lab_net}"

    owners: dict[ipaddress.IPv4Address, str] = {}
    if lab_net is not None:
        owners[host_ip(profile.lab.nspawn.gateway)] = "lab.nspawn.gateway"
    for name, spec in profile.machines.items():
        try:
            check_hostname(name)
        except ValueError as exc:
            yield f"machines.{name}: {exc}"
        yield from _claim(owners, host_ip(spec.address), f"machines.{name}.address")
        if lab_net is not None and host_ip(spec.address) not in lab_net:
            yield f"machines.{name}.address: {spec.address} is outside the lab subnet {lab_net}"

    vrids: dict[int, str] = {}
    standbys: dict[str, str] = {}
    vips: dict[ipaddress.IPv4Address, str] = {}
    for pname, pair in profile.pairs.items():
        key = f"pairs.{pname}"
        if pair.primary not in profile.machines:
            known = ", ".join(profile.machines)
            yield f"{key}.primary: {pair.primary!r} is not a key of [machines] (known: {known})"
        if pair.standby in profile.machines:
            yield f"{key}.standby: {pair.standby!r} is a production machine; name the standby apart"
        if pair.standby in standbys:
            yield f"{key}.standby: {pair.standby!r} is already standby of {standbys[pair.standby]}"
        standbys.setdefault(pair.standby, key)
        yield from _claim(owners, host_ip(pair.standby_address), f"{key}.standby_address")
        if lab_net is not None and host_ip(pair.standby_address) not in lab_net:
            yield f"{key}.standby_address: {pair.standby_address} is outside lab subnet {lab_net}"

        if pair.vrid in vrids:
            yield (
                f"{key}.vrid: {pair.vrid} is already used by {vrids[pair.vrid]}; "
                "VRIDs must be unique on a segment"
            )
        vrids.setdefault(pair.vrid, key)

        if pair.priority.primary <= pair.priority.standby:
            yield (
                f"{key}.priority: primary ({pair.priority.primary}) must be higher than "
                f"standby ({pair.priority.standby})"
            )
        yield from _advert_int_problems(key, pair)
        if pair.auth_pass is None and pair.auth_pass_env is None:
            yield f"{key}: set auth_pass or auth_pass_env"
        elif pair.auth_pass is not None and pair.auth_pass_env is not None:
            yield f"{key}: set auth_pass or auth_pass_env, not both"
        elif check_env and pair.auth_pass_env is not None:
            try:
                profile.auth_pass(pname)
            except ProfileError as exc:
                yield exc.message

        if pair.check is not None:
            script = profile.base_dir / pair.check.script
            if not script.is_file():
                yield f"{key}.check.script: file not found: {script}"

    # every machine address is claimed above, so a VIP is compared against all of them
    for pname, pair in profile.pairs.items():
        yield from _vip_problems(profile, pname, pair, owners, vips, lab_net)


def _advert_int_problems(key: str, pair: PairSpec) -> Iterator[str]:
    """What keepalived would silently change: it rounds, labctl refuses (see ADVERT_INT_*)."""
    value = pair.advert_int
    if pair.vrrp_version == 2:
        if value != int(value):
            yield (
                f"{key}.advert_int: {value:g} s is not whole seconds; VRRPv2 adverts are whole "
                f"seconds (keepalived would round it to {max(1, int(value + 0.5))}); "
                "set vrrp_version = 3 for sub-second adverts"
            )
        return
    centis = value * 100
    if abs(centis - round(centis)) > 1e-6:
        yield (
            f"{key}.advert_int: {value:g} s is not a multiple of 0.01 s; VRRPv3 counts "
            f"centiseconds (keepalived would round it to {int(centis + 0.5) / 100:g})"
        )
    elif value > ADVERT_INT_V3_MAX:
        yield (
            f"{key}.advert_int: {value:g} s is more than VRRPv3 allows ({ADVERT_INT_V3_MAX} s; "
            f"keepalived would set {ADVERT_INT_V3_MAX})"
        )


def _claim(
    owners: dict[ipaddress.IPv4Address, str], ip: ipaddress.IPv4Address, key: str
) -> Iterator[str]:
    if ip in owners:
        yield f"{key}: {ip} is already used by {owners[ip]}"
    else:
        owners[ip] = key


def _vip_problems(
    profile: Profile,
    pname: str,
    pair: PairSpec,
    owners: dict[ipaddress.IPv4Address, str],
    vips: dict[ipaddress.IPv4Address, str],
    lab_net: ipaddress.IPv4Network | None,
) -> Iterator[str]:
    subnets = []
    if lab_net is not None:
        subnets.append(lab_net)
    primary = profile.machines.get(pair.primary)
    for address in (primary.address if primary else None, pair.standby_address):
        if address and "/" in address:
            subnets.append(ipaddress.IPv4Interface(address).network)
    for i, vip in enumerate(pair.vip):
        key = f"pairs.{pname}.vip[{i}]"
        ip = ipaddress.IPv4Interface(vip).ip
        if ip in owners:
            yield f"{key}: {ip} is the address of {owners[ip]}; a virtual IP must be unused"
        elif ip in vips:
            yield f"{key}: {ip} is already a virtual IP of {vips[ip]}"
        else:
            vips[ip] = f"pairs.{pname}"
        for net in subnets:
            if ip not in net:
                yield f"{key}: {ip} lies outside the machines' subnet {net}"
                break
