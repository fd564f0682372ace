"""`connector-pipelines` said plainly to a person who got something wrong (issue 13, item 5).

An unknown pair used to print a ledger of zeros and exit 0 (a typo looked like "all clear"); a shell
without DAGSTER_HOME got a raw traceback; the vault's missing-key error suggested a Python one-liner.
Each mistake now ends with one line on stderr saying what to do, and exit status 2. No sandbox is
needed: these run against a throwaway DAGSTER_HOME, or none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from connector_pipelines import cli
from connector_pipelines.core.vault import GENERATE_KEY_COMMAND

ROOT = Path(__file__).resolve().parents[1]
PAIRS = sorted(yaml.safe_load(p.read_text())["attributes"]["name"]
               for p in (ROOT / "connector_pipelines" / "defs").glob("*/defs.yaml"))
# Every command that opens the project's database (vault generate-key does not; ping reports it per line).
DATABASE_COMMANDS = [
    ["ledger", "bc_jira"],
    ["inbox", "list", "bc_jira"],
    ["inbox", "replay", "bc_jira"],
    ["vault", "list"],
    ["vault", "put", "demo:x", "--from-env", "HOME"],
    ["vault", "delete", "demo:x"],
    ["vault", "rotate"],
    ["jira", "consent", "--no-browser"],
]
JIRA_SETTINGS = {"CONNECTOR_JIRA_CLIENT_ID": "c", "CONNECTOR_JIRA_CLIENT_SECRET": "s",
                 "CONNECTOR_JIRA_SITE_URL": "https://example.atlassian.net"}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def no_database(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("CONNECTOR_DATABASE_URL", raising=False)
    for name, value in JIRA_SETTINGS.items():   # so `jira consent` gets as far as the vault
        monkeypatch.setenv(name, value)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_the_shipped_pairs_are_the_four_known_ones():
    assert PAIRS == ["acumatica_jira", "bc_jira", "d365_jira", "d365_monday"]


@pytest.mark.parametrize("argv", [["ledger", "bc_jra"], ["inbox", "list", "bc_jra"], ["inbox", "replay", "bc_jra"]],
                         ids=["ledger", "inbox-list", "inbox-replay"])
def test_an_unknown_pair_exits_non_zero_naming_the_known_pairs(home, capsys, argv):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""                                   # no ledger of zeros that reads like "all clear"
    line = one_line(err)
    assert "no integration pair 'bc_jra'" in line
    assert all(pair in line for pair in PAIRS), line


def test_a_source_the_pair_does_not_read_is_refused_naming_its_inboxes(home, capsys):
    assert cli.main(["inbox", "list", "d365_monday", "--source", "jira"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "d365_monday reads no 'jira' inbox" in line and "finance_operations, monday" in line


def test_inbox_list_reads_each_inbox_of_the_pair_monday_included(home, capsys):
    assert cli.main(["inbox", "list", "d365_monday"]) == 0
    readers = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert readers == ["d365_monday:finance_operations", "d365_monday:monday"]   # was d365_monday:jira


def test_a_known_pair_still_prints_its_ledger(home, capsys):
    assert cli.main(["ledger", "bc_jira"]) == 0
    assert '"done": 0' in capsys.readouterr().out


@pytest.mark.parametrize("argv", DATABASE_COMMANDS, ids=[" ".join(a[:2]) for a in DATABASE_COMMANDS])
def test_without_dagster_home_a_command_says_what_to_set_in_one_line(no_database, capsys, argv):
    assert cli.main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"connector-pipelines {argv[0]}: set DAGSTER_HOME")
    assert "CONNECTOR_DATABASE_URL" in line


def test_the_installed_command_prints_no_traceback_without_dagster_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CONNECTOR_DATABASE_URL")}
    script = Path(sys.executable).with_name("connector-pipelines")
    proc = subprocess.run([str(script), "ledger", "bc_jira"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert one_line(proc.stderr).startswith("connector-pipelines ledger: set DAGSTER_HOME")


def test_the_vault_error_names_the_project_s_own_generate_key_command_and_it_works(home, capsys, monkeypatch):
    monkeypatch.delenv("CONNECTOR_VAULT_KEYS", raising=False)
    assert cli.main(["vault", "list"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"`{GENERATE_KEY_COMMAND}`" in line and "python" not in line
    # the command the error names exists and prints a key the vault takes
    program, *argv = GENERATE_KEY_COMMAND.split()
    assert program == "connector-pipelines"
    assert cli.main(argv) == 0
    key = one_line(capsys.readouterr().out)
    Fernet(key.encode())
    monkeypatch.setenv("CONNECTOR_VAULT_KEYS", key)
    assert cli.main(["vault", "list"]) == 0
