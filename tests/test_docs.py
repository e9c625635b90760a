"""The documentation stays in step with the code: every setting is documented."""

from pathlib import Path

import config

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_env_example():
    text = (ROOT / ".env.example").read_text()
    missing = [s.name for s in config.SETTINGS if f"{s.name}=" not in text]
    assert not missing


def test_every_setting_is_in_the_readme_table():
    text = (ROOT / "README.md").read_text()
    missing = [s.name for s in config.SETTINGS if f"| `{s.name}` |" not in text]
    assert not missing


def test_env_example_names_no_unknown_setting():
    known = {s.name for s in config.SETTINGS}
    names = {line.lstrip("#").split("=", 1)[0].strip()
             for line in (ROOT / ".env.example").read_text().splitlines()
             if "=" in line and line.lstrip("#").split("=", 1)[0].strip().isupper()}
    assert names <= known, names - known


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
