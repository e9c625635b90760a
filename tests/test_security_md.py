"""SECURITY.md stays true: every test it names exists, every threat and every ASVS
row names at least one existing test as its proof, every ASVS row has a status, and
the document names every asset and attacker."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "SECURITY.md"

# `tests/<file>.py::<name>`; a parametrized test is named without its brackets.
REFERENCE = re.compile(r"tests/([A-Za-z0-9_/]+\.py)::([A-Za-z_][A-Za-z0-9_]*)")
# A row of the ASVS table: | 2.1.1 | requirement | status | where | test |
ASVS_ROW = re.compile(r"^\|\s*(\d+\.\d+\.\d+)\s*\|")
STATUSES = ("met", "not applicable", "not met")

ASSETS = [
    "sessions",
    "magic links",
    "sign-in codes",
    "other customers' tickets and files",
    "private notes",
    "administrator token",
    "webhook secret",
    "SMTP credentials",
    "session secret",
]
ATTACKERS = [
    "another customer",
    "an anonymous visitor",
    "a mail scanner",
    "a forged webhook",
    "a hostile agent message or attachment",
    "someone on the same host",
]


def doc():
    return DOC.read_text(encoding="utf-8")


def references(text):
    return sorted(set(REFERENCE.findall(text)))


def defined_functions(path):
    """Names of the functions defined at the top level of a test module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def asvs_rows(text):
    rows = []
    for line in text.splitlines():
        match = ASVS_ROW.match(line)
        if match:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append((match.group(1), cells))
    return rows


def status_of(cell):
    """The status a cell starts with, longest first ("not met" before "met")."""
    match = re.match(r"\**(not applicable|not met|met)\b", cell.lower())
    return match.group(1) if match else None


def named_test_exists(file, name):
    """Whether tests/<file> defines the test function <name> at its top level."""
    path = ROOT / "tests" / file
    return path.is_file() and name.startswith("test_") and name in defined_functions(path)


def missing_tests(cell):
    """The references in `cell` that name no existing test."""
    return [f"tests/{file}::{name}" for file, name in references(cell) if not named_test_exists(file, name)]


def threat_proofs(text):
    """(title, the text of its Proof) for each threat of section 4."""
    proofs = []
    for threat in re.split(r"^#### ", text, flags=re.M)[1:]:
        title = threat.splitlines()[0]
        body = threat.split("\n### ")[0].split("\n## ")[0]
        proofs.append((title, body.partition("**Proof:**")[2]))
    return proofs


def test_the_security_document_exists_and_names_tests():
    assert DOC.is_file()
    assert len(references(doc())) >= 30


@pytest.mark.parametrize("file, name", references(DOC.read_text(encoding="utf-8")) if DOC.is_file() else [])
def test_every_named_test_exists(file, name):
    path = ROOT / "tests" / file
    assert path.is_file(), f"SECURITY.md names tests/{file}, which does not exist"
    assert name.startswith("test_"), f"tests/{file}::{name} is not a test function name"
    assert re.search(rf"^def {re.escape(name)}\(", path.read_text(encoding="utf-8"), re.M), \
        f"SECURITY.md names tests/{file}::{name}, which is not defined there"
    assert name in defined_functions(path)


def test_every_threat_names_its_defence():
    text = doc()
    threats = re.split(r"^#### ", text, flags=re.M)[1:]
    assert len(threats) >= 20
    for threat in threats:
        title = threat.splitlines()[0]
        body = threat.split("\n### ")[0].split("\n## ")[0]
        assert "**Defence:**" in body, title


def test_every_threat_names_at_least_one_existing_test_as_its_proof():
    proofs = threat_proofs(doc())
    assert len(proofs) >= 20
    for title, proof in proofs:
        assert references(proof), f"threat {title!r} names no test as its proof"
        assert not missing_tests(proof), f"threat {title!r} names tests that do not exist: {missing_tests(proof)}"


def test_every_asvs_row_has_a_status_saying_why_when_not_met():
    rows = asvs_rows(doc())
    assert len(rows) >= 60
    ids = [asvs_id for asvs_id, _ in rows]
    assert len(ids) == len(set(ids)), "an ASVS requirement appears twice"
    for asvs_id, cells in rows:
        assert len(cells) == 5, f"{asvs_id}: expected id, requirement, status, where, test"
        _, requirement, status, _, _ = cells
        assert requirement, asvs_id
        assert status_of(status) in STATUSES, f"{asvs_id}: status {status!r} is not met / not applicable / not met"
        if status_of(status) != "met":
            # "not met because", "not applicable: no passwords"
            assert len(status) > len(status_of(status)) + 5, f"{asvs_id}: {status!r} does not say why"


def test_every_asvs_row_names_at_least_one_existing_test():
    """Not applicable or not met included: a reason is no proof. The Test column
    holds references only, each one a test that exists."""
    rows = asvs_rows(doc())
    assert len(rows) >= 60
    for asvs_id, cells in rows:
        test = cells[-1]
        assert references(test), f"{asvs_id}: the Test column names no tests/<file>.py::<test> ({test!r})"
        assert not missing_tests(test), f"{asvs_id}: names tests that do not exist: {missing_tests(test)}"
        leftover = REFERENCE.sub("", test).replace("`", "").replace(",", "").strip()
        assert leftover == "", f"{asvs_id}: the Test column holds more than references: {leftover!r}"


def test_the_row_checks_refuse_a_row_without_an_existing_test():
    for cell in ("none: no passwords", "—", "`tests/test_signin.py::test_that_was_never_written`",
                 "`tests/no_such_file.py::test_anything`", "`tests/test_signin.py::request_link`"):
        assert not references(cell) or missing_tests(cell), cell
    assert not missing_tests("`tests/test_security_md.py::test_every_asvs_row_names_at_least_one_existing_test`")


def test_the_asvs_table_covers_each_chapter_asked_for():
    chapters = {asvs_id.split(".")[0] for asvs_id, _ in asvs_rows(doc())}
    assert {"2", "3", "4", "5", "12", "13", "14"} <= chapters


def test_the_asvs_count_sentence_matches_the_table():
    text = doc()
    statuses = [status_of(cells[2]) for _, cells in asvs_rows(text)]
    match = re.search(r"Count: (\d+) rows: (\d+) met, (\d+) not applicable, (\d+) not met", text)
    assert match, "the sentence counting the ASVS rows is missing"
    assert [int(n) for n in match.groups()] == [
        len(statuses), statuses.count("met"), statuses.count("not applicable"), statuses.count("not met")]


@pytest.mark.parametrize("asset", ASSETS)
def test_the_document_names_each_asset(asset):
    assets = doc().partition("## 2. Assets")[2].partition("\n## ")[0]
    assert asset.lower() in assets.lower(), f"the Assets section does not name {asset!r}"


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_the_document_names_each_attacker(attacker):
    text = doc()
    attackers = text.partition("## 3. Attackers")[2].partition("\n## ")[0]
    assert attacker.lower() in attackers.lower(), f"the Attackers section does not name {attacker!r}"
    threats = text.partition("## 4. Threats")[2].partition("\n## ")[0]
    headings = [line[4:].strip().lower() for line in threats.splitlines() if line.startswith("### ")]
    assert attacker.lower() in headings, f"no threats are listed under {attacker!r}"


def test_the_reporting_section_is_private_and_says_what_to_include():
    section = doc().partition("Reporting a vulnerability")[2]
    assert "private vulnerability reporting" in section
    assert "maintainers listed in the repository" in section
    assert re.search(r"do not open a public issue", section, re.I)
    assert "include" in section.lower() and "expect" in section.lower()
    assert "security@example.com" not in doc()
