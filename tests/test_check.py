"""`python portal.py --check` and start-up refusal, run as a real process."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import portal_settings

ROOT = Path(__file__).resolve().parent.parent


def run_portal(args, settings, cwd):
    env = {key: value for key, value in os.environ.items() if key not in settings}
    env.update(settings)
    return subprocess.run([sys.executable, str(ROOT / "portal.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_passes_when_chatwoot_and_smtp_answer(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_check_names_a_wrong_api_token(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_API_TOKEN="wrong"), tmp_path)
    assert result.returncode == 1
    assert "API token" in result.stdout
    assert "wrong" not in result.stdout  # the token itself is never printed


def test_check_says_the_inbox_is_not_an_api_inbox(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_INBOX_ID=str(fake.email_inbox)), tmp_path)
    assert result.returncode == 1
    assert "API-type inbox" in result.stdout


def test_check_says_the_inbox_does_not_exist(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_INBOX_ID="999"), tmp_path)
    assert result.returncode == 1
    assert "999 does not exist" in result.stdout


def test_check_says_chatwoot_is_unreachable(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    fake.stop()
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "not reachable" in result.stdout


def test_check_says_smtp_is_unreachable(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    smtp.controller.stop()
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "SMTP server" in result.stdout


def test_start_refuses_a_broken_configuration_and_lists_every_problem(tmp_path):
    result = run_portal([], {"PORT": "abc", "SESSION_SECRET": "short"}, tmp_path)
    assert result.returncode == 2
    for name in ("PORT", "SESSION_SECRET", "PORTAL_URL", "CHATWOOT_API_TOKEN", "CHATWOOT_INBOX_ID", "SMTP_ADDRESS"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_read_from_a_dotenv_file_in_the_working_directory(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    result = run_portal(["--check"], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
