"""The container module's spec: a strict subset of the compose file format (docs/agent.md "The container module").

``parse(text)`` reads a compose file (YAML, or JSON, which is YAML too) and returns the normalized spec the module
runs, or raises :class:`SpecError` naming the field that is wrong (``services.web.ports[1]: …``). Anything outside
the subset is refused by name rather than ignored, so a spec never means more on another tool than on the device.

Top level: ``services`` (required), ``volumes`` (named volumes, no options), ``version`` and ``name`` (ignored).
Per service: ``image``, ``command``, ``environment``, ``ports``, ``volumes``, ``restart``, ``healthcheck``,
``depends_on``.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
ENV_KEY = re.compile(r"[^=\s][^=]{0,254}")
# [registry[:port]/]path[:tag][@sha256:digest], lower-case path components as the distribution spec has them.
IMAGE = re.compile(r"(?P<repo>(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                   r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                   r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?")
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s|us))+")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
RESTART = ("no", "always", "on-failure", "unless-stopped")
CONDITIONS = ("service_started", "service_healthy")
TOP_KEYS = ("services", "volumes", "version", "name")
SERVICE_KEYS = ("image", "command", "environment", "ports", "volumes", "restart", "healthcheck", "depends_on")
HEALTH_KEYS = ("test", "interval", "timeout", "retries", "start_period", "disable")
HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}


class SpecError(ValueError):
    """The spec is not in the supported subset; the message names the field and what to write instead."""


def load(text: str) -> Any:
    """YAML through PyYAML (Debian: python3-yaml) when present; JSON (a YAML subset) always."""
    try:
        import yaml  # type: ignore[import-untyped]  # Debian's python3-yaml; no stubs needed
    except ImportError:
        try:
            return json.loads(text)
        except ValueError as e:
            raise SpecError(f"the spec is not JSON ({e}) and this device cannot read YAML: install python3-yaml "
                            "(pip: PyYAML), or ship the compose file as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"the spec is not valid YAML: {e}".replace("\n", " ")) from None
    except RecursionError:
        raise SpecError("the spec is nested too deeply to read") from None


def parse(text: str) -> dict[str, Any]:
    return normalize(load(text))


def _type(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SpecError(f"{where}: must be {what}, not {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(key: Any) -> str:
    """A mapping key as an error shows it: plain when it is a plain word, quoted otherwise."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w.-]{1,64}", key) else _show(key)


def _unknown(where: str, got: dict[Any, Any], allowed: tuple[str, ...]) -> None:
    for key in got:
        if key not in allowed:
            raise SpecError(f"{where + '.' if where else ''}{_key(key)}: not in the subset the container module runs "
                            f"(supported here: {', '.join(allowed)})")


def duration(where: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e7:
        return float(value)
    if isinstance(value, str) and DURATION.fullmatch(value):
        total = sum(float(n) * UNIT[u] for n, u in DURATION_PART.findall(value))
        if total < 1e7:
            return total
    raise SpecError(f"{where}: must be a duration such as 30s, 1m30s or 500ms, not {_show(value)}")


def _strings(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            out = shlex.split(value)
        except ValueError as e:
            raise SpecError(f"{where}: cannot split {_show(value)} into words ({e}); write it as a list") from None
        if not out:
            raise SpecError(f"{where}: is empty")
        return out
    _type(where, value, list, "a string or a list of strings")
    for i, item in enumerate(value):
        _type(f"{where}[{i}]", item, str, "a string")
    if not value:
        raise SpecError(f"{where}: is empty")
    return list(value)


def _scalar(where: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    _type(where, value, (str, int, float), "a string or a number")
    return str(value)


def _environment(where: str, value: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, dict):
        items = [(k, _scalar(f"{where}.{_key(k)}", v)) for k, v in value.items()]
    else:
        _type(where, value, list, "a mapping or a list of KEY=value")
        items = []
        for i, item in enumerate(value):
            _type(f"{where}[{i}]", item, str, "a string KEY=value")
            key, eq, val = item.partition("=")
            if not eq:
                raise SpecError(f"{where}[{i}]: {_show(item)} has no '=': write KEY=value")
            items.append((key, val))
    for key, val in items:
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
            raise SpecError(f"{where}: {_show(key)} is not a variable name (no '=', not empty)"
                            + ("; YAML reads yes/no/on/off as booleans: quote it" if isinstance(key, bool) else ""))
        if "\0" in val:
            raise SpecError(f"{where}.{_key(key)}: holds a NUL character")
        out[key] = val
    return out


def _port(where: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    _type(where, value, str, "a string such as 8080:80 or 127.0.0.1:8080:80/tcp")
    spec, _, proto = value.partition("/")
    if proto not in ("", "tcp", "udp"):
        raise SpecError(f"{where}: protocol {proto!r} must be tcp or udp")
    if spec.startswith("[") or spec.count(":") == 2:
        ip, _, spec = spec.partition("]:") if spec.startswith("[") else spec.partition(":")
        if not re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+", ip):
            raise SpecError(f"{where}: {ip!r} is not an IP address to publish on")
    parts = spec.split(":")
    if len(parts) > 2 or not all(re.fullmatch(r"[0-9]{1,5}", p) and 0 < int(p) < 65536 for p in parts):
        raise SpecError(f"{where}: {_show(value)} must be [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp], ports 1-65535")
    return value


def _volume(where: str, value: Any, named: set[str]) -> tuple[str, str, str]:
    _type(where, value, str, "a string SOURCE:TARGET[:ro]")
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise SpecError(f"{where}: {_show(value)} must be SOURCE:TARGET or SOURCE:TARGET:ro "
                        "(SOURCE an absolute host path or a named volume)")
    source, target = parts[0], parts[1]
    if not target.startswith("/") or ".." in target.split("/"):
        raise SpecError(f"{where}: the target {target!r} must be an absolute path in the container without '..'")
    if source.startswith("/"):
        if ".." in source.split("/"):
            raise SpecError(f"{where}: the host path {source!r} must not hold '..'")
    elif source not in named:
        raise SpecError(f"{where}: {source!r} is neither an absolute host path nor a volume named under the "
                        "top-level volumes:")
    return source, target, parts[2] if len(parts) == 3 else "rw"


def _healthcheck(where: str, value: Any) -> dict[str, Any] | None:
    _type(where, value, dict, "a mapping")
    _unknown(where, value, HEALTH_KEYS)
    if value.get("disable") is True:
        return None
    if "disable" in value:
        _type(f"{where}.disable", value["disable"], bool, "true or false")
    if "test" not in value:
        raise SpecError(f"{where}.test: is missing (write [CMD, prog, arg…] or [CMD-SHELL, \"command\"])")
    test = value["test"]
    if isinstance(test, str):
        argv = ["/bin/sh", "-c", test]
    else:
        words = _strings(f"{where}.test", test)
        if words == ["NONE"]:
            return None
        if words[0] == "CMD" and len(words) > 1:
            argv = words[1:]
        elif words[0] == "CMD-SHELL" and len(words) == 2:
            argv = ["/bin/sh", "-c", words[1]]
        else:
            raise SpecError(f"{where}.test: must start with CMD (then the program and its arguments), or be "
                            "[CMD-SHELL, \"command\"], [NONE] or a string")
    out: dict[str, Any] = {"test": argv}
    for key, default in HEALTH_DEFAULTS.items():
        raw = value.get(key, default)
        if key == "retries":
            _type(f"{where}.retries", raw, int, "a whole number")
            if not 1 <= raw <= 1000:
                raise SpecError(f"{where}.retries: must be 1-1000, not {raw}")
            out[key] = raw
        else:
            out[key] = duration(f"{where}.{key}", raw)
    if out["timeout"] <= 0:
        raise SpecError(f"{where}.timeout: must be more than 0")
    return out


def _depends(where: str, value: Any, services: dict[str, Any]) -> dict[str, str]:
    if isinstance(value, list):
        for i, v in enumerate(value):
            _type(f"{where}[{i}]", v, str, "a service name")
        value = {v: {} for v in value}
    _type(where, value, dict, "a list of service names or a mapping of them")
    out = {}
    for dep, opts in value.items():
        if dep not in services:
            raise SpecError(f"{where}: {_show(dep)} is not a service of this spec")
        opts = {} if opts is None else opts
        _type(f"{where}.{dep}", opts, dict, "a mapping")
        _unknown(f"{where}.{dep}", opts, ("condition",))
        cond = opts.get("condition", "service_started")
        if cond not in CONDITIONS:
            raise SpecError(f"{where}.{dep}.condition: must be one of {', '.join(CONDITIONS)}, not {_show(cond)}")
        out[dep] = cond
    return out


def normalize(doc: Any) -> dict[str, Any]:
    """The spec as the module runs it: every field checked, defaults filled, services in start order."""
    _type("the spec", doc, dict, "a mapping with services:")
    _unknown("", doc, TOP_KEYS)
    vols = doc.get("volumes") or {}
    _type("volumes", vols, dict, "a mapping of volume names")
    for name, opts in vols.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SpecError(f"volumes: {_show(name)} is not a volume name ({NAME.pattern})")
        if opts not in (None, {}):
            raise SpecError(f"volumes.{name}: volume options are not in the subset; leave it empty ({name}: {{}})")
    services = doc.get("services")
    if services is None:
        raise SpecError("services: is missing; a spec runs at least one service")
    _type("services", services, dict, "a mapping of service names")
    if not services:
        raise SpecError("services: is empty; a spec runs at least one service")
    out: dict[str, Any] = {}
    for name, svc in services.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SpecError(f"services: {_show(name)} is not a service name (letters, digits, _ . -, at most 63)")
        where = f"services.{name}"
        _type(where, svc, dict, "a mapping")
        _unknown(where, svc, SERVICE_KEYS)
        image = svc.get("image")
        if image is None:
            raise SpecError(f"{where}.image: is missing (an image by digest, or one in the artifact's archive)")
        _type(f"{where}.image", image, str, "an image reference")
        m = IMAGE.fullmatch(image)
        if not m or len(image) > 255:
            raise SpecError(f"{where}.image: {_show(image)} is not an image reference such as "
                            "registry.example/app@sha256:<64 hex> or app:1.2")
        restart = svc.get("restart", "no")
        _type(f"{where}.restart", restart, str, "a string")
        if restart not in RESTART:
            raise SpecError(f"{where}.restart: must be one of {', '.join(RESTART)}, not {_show(restart)}")
        ports = svc.get("ports") or []
        _type(f"{where}.ports", ports, list, "a list")
        volumes = svc.get("volumes") or []
        _type(f"{where}.volumes", volumes, list, "a list")
        health = svc.get("healthcheck")
        out[name] = {
            "image": image, "digest": m.group("digest") or "",
            "command": _strings(f"{where}.command", svc["command"]) if svc.get("command") is not None else None,
            "environment": _environment(f"{where}.environment", svc.get("environment") or {}),
            "ports": [_port(f"{where}.ports[{i}]", p) for i, p in enumerate(ports)],
            "volumes": [list(_volume(f"{where}.volumes[{i}]", v, set(vols))) for i, v in enumerate(volumes)],
            "restart": restart,
            "healthcheck": _healthcheck(f"{where}.healthcheck", health) if health is not None else None,
            "depends_on": _depends(f"{where}.depends_on", svc.get("depends_on") or [], services),
        }
    for name, svc in out.items():
        for dep, cond in svc["depends_on"].items():
            if cond == "service_healthy" and out[dep]["healthcheck"] is None:
                raise SpecError(f"services.{name}.depends_on.{dep}: waits for service_healthy but {dep} has no "
                                "healthcheck")
    return {"services": out, "volumes": sorted(vols), "order": start_order(out)}


def start_order(services: dict[str, Any]) -> list[str]:
    """depends_on first; a cycle is refused naming it."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name):], name]
            raise SpecError(f"services.{name}.depends_on: a cycle ({' -> '.join(cycle)})")
        state[name] = 1
        for dep in services[name]["depends_on"]:
            visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in services:
        visit(name, [])
    return order


__all__ = ["SpecError", "duration", "load", "normalize", "parse", "start_order"]
