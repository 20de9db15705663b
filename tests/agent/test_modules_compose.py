"""The container module's spec parser (fleet_agent.modules.compose): the subset read right, anything else refused
with an error naming the field, and no input — however odd — escaping as anything but SpecError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_agent.modules.compose import SpecError, normalize, parse

DIGEST = "registry.example:5000/team/web@sha256:" + "ab" * 32

VALID = f"""
version: "3.8"
services:
  web:
    image: {DIGEST}
    command: /bin/busybox httpd -f -p "80 80"
    environment: [A=1, "B=two words"]
    ports: ["127.0.0.1:8080:80", "9000:9000/udp", 81]
    volumes: ["data:/data", "/etc/ssl:/ssl:ro"]
    restart: unless-stopped
    depends_on:
      db: {{condition: service_healthy}}
    healthcheck: {{test: [CMD-SHELL, "wget -q -O- localhost"], interval: 1m30s, timeout: 500ms, retries: 5}}
  db:
    image: localhost/db:2
    environment: {{PASSWORD: null, N: 3, FLAG: true}}
    healthcheck: {{test: [CMD, /bin/true], start_period: 10s}}
  worker:
    image: worker
    depends_on: [db]
volumes:
  data: {{}}
"""


def test_the_subset_is_read_and_normalized() -> None:
    spec = parse(VALID)
    assert spec["order"].index("db") < spec["order"].index("web") and spec["order"].index("db") < spec["order"].index(
        "worker"), "depends_on first"
    web, db = spec["services"]["web"], spec["services"]["db"]
    assert web["digest"] == "sha256:" + "ab" * 32 and db["digest"] == ""
    assert web["command"] == ["/bin/busybox", "httpd", "-f", "-p", "80 80"]
    assert web["environment"] == {"A": "1", "B": "two words"}
    assert db["environment"] == {"PASSWORD": "", "N": "3", "FLAG": "true"}
    assert web["ports"] == ["127.0.0.1:8080:80", "9000:9000/udp", "81"]
    assert web["volumes"] == [["data", "/data", "rw"], ["/etc/ssl", "/ssl", "ro"]]
    assert web["healthcheck"] == {"test": ["/bin/sh", "-c", "wget -q -O- localhost"], "interval": 90.0,
                                  "timeout": 0.5, "retries": 5, "start_period": 0.0}
    assert db["healthcheck"]["test"] == ["/bin/true"] and db["healthcheck"]["start_period"] == 10.0
    assert web["depends_on"] == {"db": "service_healthy"} and spec["services"]["worker"]["depends_on"] == {
        "db": "service_started"}
    assert spec["services"]["worker"]["healthcheck"] is None and spec["volumes"] == ["data"]
    assert parse(json.dumps({"services": {"a": {"image": "a:1"}}}))["order"] == ["a"], "JSON is read too"


@pytest.mark.parametrize(("service", "message"), [
    ({"image": "a", "build": "."}, "services.s.build: not in the subset"),
    ({"command": ["x"]}, "services.s.image: is missing"),
    ({"image": "UPPER/Case"}, "services.s.image: 'UPPER/Case' is not an image reference"),
    ({"image": "a", "ports": ["1.2.3.4:70000:80"]}, "services.s.ports[0]: '1.2.3.4:70000:80' must be"),
    ({"image": "a", "ports": ["80/sctp"]}, "services.s.ports[0]: protocol 'sctp'"),
    ({"image": "a", "volumes": ["cache:/c"]}, "services.s.volumes[0]: 'cache' is neither an absolute host path"),
    ({"image": "a", "volumes": ["/x:relative"]}, "services.s.volumes[0]: the target 'relative'"),
    ({"image": "a", "restart": "sometimes"}, "services.s.restart: must be one of no, always"),
    ({"image": "a", "environment": ["NOEQUALS"]}, "services.s.environment[0]: 'NOEQUALS' has no '='"),
    ({"image": "a", "environment": {"K": [1]}}, "services.s.environment.K: must be a string or a number"),
    ({"image": "a", "healthcheck": {"interval": "5s"}}, "services.s.healthcheck.test: is missing"),
    ({"image": "a", "healthcheck": {"test": ["CMD"]}}, "services.s.healthcheck.test: must start with CMD"),
    ({"image": "a", "healthcheck": {"test": "true", "interval": "soon"}},
     "services.s.healthcheck.interval: must be a duration"),
    ({"image": "a", "healthcheck": {"test": "true", "retries": 0}}, "services.s.healthcheck.retries: must be 1-1000"),
    ({"image": "a", "depends_on": ["nobody"]}, "services.s.depends_on: 'nobody' is not a service"),
    ({"image": "a", "depends_on": ["s"]}, "services.s.depends_on: a cycle (s -> s)"),
    ({"image": "a", "command": "unclosed 'quote"}, "services.s.command: cannot split"),
    ({"image": "a", "command": []}, "services.s.command: is empty"),
])
def test_a_field_outside_the_subset_is_refused_by_name(service: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as e:
        normalize({"services": {"s": service}})
    assert message in str(e.value)


def test_top_level_errors_name_the_field() -> None:
    cases = [("[]", "the spec: must be a mapping"), ("x: 1", "x: not in the subset"),
             ("services: {}", "services: is empty"), ("volumes: {}", "services: is missing"),
             ("services: {a: {image: a}}\nvolumes: {v: {driver: local}}", "volumes.v: volume options"),
             ("services: {a: {image: a, depends_on: {b: {condition: service_healthy}}}, b: {image: b}}",
              "services.a.depends_on.b: waits for service_healthy but b has no healthcheck"),
             ("services: [unclosed", "the spec is not valid YAML"),
             ("services: {a: {image: a, environment: {on: 1}}}", "YAML reads yes/no/on/off as booleans: quote it")]
    for text, message in cases:
        with pytest.raises(SpecError) as e:
            parse(text)
        assert message in str(e.value), text


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["a", "80:80", "/x:/y", "CMD", "1s", "service_healthy", "always", "s:/d"]))
keys = st.one_of(st.sampled_from(["services", "volumes", "image", "command", "environment", "ports", "healthcheck",
                                  "depends_on", "restart", "test", "interval", "retries", "condition", "s", "t"]),
                 st.text(max_size=6), st.integers())
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_any_document_is_a_spec_or_a_spec_error(doc: Any) -> None:
    try:
        spec = normalize(doc)
    except SpecError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert set(spec["order"]) == set(spec["services"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_spec_or_a_spec_error(text: str) -> None:
    try:
        parse(text)
    except SpecError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["image", "command", "environment", "ports", "volumes", "restart", "healthcheck",
                        "depends_on"]), scalars | st.lists(scalars, max_size=3) | st.dictionaries(keys, scalars))
def test_a_bad_value_in_a_valid_spec_names_its_service_and_field(field: str, value: Any) -> None:
    doc = {"services": {"web": {"image": "web:1", "healthcheck": {"test": "true"}},
                        "db": {"image": "db:1", "healthcheck": {"test": "true"}}}, "volumes": {"v": None}}
    doc["services"]["web"][field] = value
    try:
        normalize(doc)
    except SpecError as e:
        assert str(e).startswith(f"services.web.{field}"), str(e)


def test_the_readme_compose_file_is_in_the_subset() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    text = readme.split("cat > compose.yaml <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    spec = parse(text)
    assert spec["services"]["web"]["ports"] == ["8080:8080"] and spec["services"]["web"]["healthcheck"]


def test_the_container_module_is_loaded_only_on_a_device_with_containers(tmp_path: Path) -> None:
    """The agent's idle footprint: the module, its parser and YAML stay out until a container release exists."""
    def installed(name: str, module: str) -> None:
        (tmp_path / "updates" / name).mkdir(parents=True)
        (tmp_path / "updates" / name / "installed.json").write_text(json.dumps({"module": module, "version": "1"}))

    installed("conf", "file")
    probe = ("import sys, json; from pathlib import Path; from fleet_agent.modules.sequence import Driver; "
             "d = Driver(Path(sys.argv[1]), 'linux-x86_64', reboot=lambda: None); d.recover(); "
             "comps = d.components(); "
             "print(json.dumps([comps, [m for m in ('fleet_agent.modules.container', 'fleet_agent.modules.compose', "
             "'yaml') if m in sys.modules]]))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "agent"),
               FLEET_AGENT_CONTAINER_RUNTIME="/nonexistent/podman")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=60)
    comps, loaded = json.loads(r.stdout)
    assert loaded == [], "nothing installed by the container module: none of it loaded"

    installed("stack", "container")
    current = tmp_path / "updates" / "stack" / "container"
    current.mkdir()
    (current / "current.json").write_text(json.dumps({"release": "t1"}))
    (current / "t1.json").write_text(json.dumps({"token": "t1", "spec": {"order": ["a"], "services": {}},
                                                 "containers": {"a": "fleet-stack-a-1-t1"}}))
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=60)
    comps, loaded = json.loads(r.stdout)
    assert "fleet_agent.modules.container" in loaded and "yaml" not in loaded
    stack = next(c for c in comps if c["name"] == "stack")
    assert (stack["state"], stack["health"]) == ("failed", "unhealthy"), "no runtime: reported, not hidden"
