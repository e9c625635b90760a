"""portal.service and the template portal@.service, checked by systemd's own tools (systemd-analyze)."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import require_tools

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "portal.service"


@pytest.fixture
def unit_here(tmp_path):
    """The unit with its install paths pointed at this checkout, so `verify` can
    check that the commands it names exist and are executable."""
    text = UNIT.read_text()
    text = text.replace("/opt/chatwoot-portal", str(ROOT)).replace("/etc/chatwoot-portal.env", str(ROOT / ".env.example"))
    path = tmp_path / "chatwoot-portal.service"
    path.write_text(text)
    return path


def test_systemd_rates_the_unit_ok_or_better(tmp_path):
    require_tools("systemd-analyze")
    path = tmp_path / "chatwoot-portal.service"
    path.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_systemd_analyze_verify_finds_nothing_wrong(unit_here):
    require_tools("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "verify", str(unit_here)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chatwoot-portal.service" not in result.stderr, result.stderr


def test_the_unit_runs_the_portal_from_its_venv_as_an_unprivileged_user():
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=\S*/\.venv/bin/python \S*/portal\.py$", text, re.M)
    assert re.search(r"^(User=\S+|DynamicUser=yes)$", text, re.M)
    assert not re.search(r"^User=root$", text, re.M)
    assert re.search(r"^EnvironmentFile=\S+$", text, re.M)
    assert re.search(r"^Restart=on-failure$", text, re.M)


def test_the_unit_gives_the_reply_mail_queue_a_state_directory_of_its_own():
    text = UNIT.read_text()
    directory = re.search(r"^StateDirectory=(\S+)$", text, re.M).group(1)
    assert re.search(rf"^Environment=STATE_DIR=/var/lib/{re.escape(directory)}$", text, re.M)
    assert re.search(r"^StateDirectoryMode=0700$", text, re.M)


# ---------------------------------------------------------------------------
# portal@.service: several instances, one per port, sharing their state in Redis
# ---------------------------------------------------------------------------

TEMPLATE = ROOT / "portal@.service"
# What one instance does differently from the single portal: its port and state
# folder come from its name, and it refuses to start without STATE_URL.
PER_INSTANCE = {"ExecStartPre", "ExecStart", "StateDirectory", "Environment:STATE_DIR"}


def service_settings(text):
    """The [Service] section as a set of (key, value); Environment= keyed by its variable."""
    settings, section = set(), None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key == "Environment":
                key = "Environment:" + value.split("=", 1)[0]
            settings.add((key, value))
    return settings


def setting(text, key):
    [value] = [v for k, v in service_settings(text) if k == key]
    return value


def env_file(path):
    """KEY=value lines of an EnvironmentFile (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def template_here(tmp_path):
    """The template with its install paths pointed at this checkout, as for portal.service."""
    text = TEMPLATE.read_text()
    text = text.replace("/opt/chatwoot-portal", str(ROOT)).replace("/etc/chatwoot-portal.env", str(ROOT / ".env.example"))
    (tmp_path / "chatwoot-portal@.service").write_text(text)
    # An instance name: systemd loads it from the template in the same folder.
    return tmp_path / "chatwoot-portal@3001.service"


def test_systemd_analyze_verify_finds_nothing_wrong_in_an_instance_of_the_template(template_here):
    require_tools("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "verify", str(template_here)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chatwoot-portal@" not in result.stderr, result.stderr


def test_systemd_rates_an_instance_of_the_template_ok_or_better(tmp_path):
    require_tools("systemd-analyze")
    (tmp_path / "chatwoot-portal@.service").write_text(TEMPLATE.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=true",
                             str(tmp_path / "chatwoot-portal@3001.service")],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for chatwoot-portal@3001\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_an_instance_is_hardened_and_run_exactly_like_the_single_portal():
    single, template = service_settings(UNIT.read_text()), service_settings(TEMPLATE.read_text())
    assert ("NoNewPrivileges", "yes") in template and ("SystemCallFilter", "@system-service") in template
    differing = {key for key, _ in single ^ template}
    assert differing <= PER_INSTANCE, sorted(single ^ template)


def test_each_instance_listens_on_the_port_of_its_name_whatever_the_shared_settings_file_says():
    text = TEMPLATE.read_text().replace("/opt/chatwoot-portal", str(ROOT))
    shared = env_file(ROOT / ".env.example")
    assert shared["PORT"] == "3001"  # the file every instance reads names a port of its own
    # As systemd builds it: Environment=, then the EnvironmentFile over it, then the command.
    environment = {"PATH": "/usr/bin:/bin"}
    environment.update(value.split("=", 1) for key, value in service_settings(text) if key.startswith("Environment:"))
    environment.update(shared)
    command = shlex.split(setting(text, "ExecStart").replace("%i", "3002"))
    assert command[-1] == f"{ROOT}/portal.py"
    probe = "import json, os; print(json.dumps([os.environ['PORT'], os.environ['STATE_DIR']]))"
    result = subprocess.run(command[:-1] + ["-c", probe], env=environment, capture_output=True, text=True,
                            timeout=60, check=True)
    port, state_dir = json.loads(result.stdout)
    assert port == "3002"
    assert state_dir == "/var/lib/" + setting(text, "StateDirectory").replace("%i", "3002")


def test_each_instance_has_a_private_state_directory_of_its_own():
    text = TEMPLATE.read_text()
    assert setting(text, "StateDirectory").endswith("/%i")
    assert setting(text, "StateDirectoryMode") == "0700"


@pytest.mark.parametrize("state_url, starts", [("", False), ("redis://127.0.0.1:6379/5", True)])
def test_an_instance_refuses_to_start_without_state_url(state_url, starts):
    # systemd turns $$ into $ and hands the rest to the shell.
    command = shlex.split(setting(TEMPLATE.read_text(), "ExecStartPre").replace("$$", "$"))
    environment = {"PATH": "/usr/bin:/bin"} | ({"STATE_URL": state_url} if state_url else {})
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert (result.returncode == 0) == starts, result.stderr
    assert ("STATE_URL is not set" in result.stderr) != starts
