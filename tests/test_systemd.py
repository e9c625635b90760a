"""portal.service, checked by systemd's own tools (systemd-analyze)."""

import re
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
