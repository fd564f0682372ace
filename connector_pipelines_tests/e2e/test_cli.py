"""`connector-pipelines ping` against the sandboxes: what works is said, what does not is named."""

from connector_pipelines import cli
from connector_pipelines.components.resources import clear_client_cache


def test_ping_reports_every_connection_ok(world, capsys):
    assert cli.main(["ping"]) == 0
    out = capsys.readouterr().out
    for what in ("database", "vault", "entra id (business central)", "business central api", "atlassian oauth",
                 "jira cloud api"):
        assert f"OK    {what}" in out, out
    assert "CRONUS USA, Inc." in out and "6 ok, 0 failed" in out
    assert world.stack.secrets["bc_client_secret"] not in out


def test_ping_names_what_fails_without_leaking_the_secret(world, capsys, monkeypatch):
    monkeypatch.setenv("CONNECTOR_BC_CLIENT_SECRET", "wrong-secret-value")
    clear_client_cache()
    assert cli.main(["ping"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  entra id (business central)" in out and "AADSTS7000215" in out
    assert "OK    jira cloud api" in out
    assert "wrong-secret-value" not in out


def test_vault_cli_lists_names_never_values(world, capsys):
    assert cli.main(["vault", "list"]) == 0
    out = capsys.readouterr().out
    assert "atlassian:jira" in out and "refresh_token" not in out
