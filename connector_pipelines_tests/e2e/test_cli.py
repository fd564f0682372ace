"""`connector-pipelines ping` against the sandboxes: what works is said, what does not is named."""

from connector_pipelines import cli


def test_ping_reports_every_connection_ok(world, capsys):
    assert cli.main(["ping"]) == 0
    out = capsys.readouterr().out
    for what in ("database", "vault", "entra id (business central)", "business central api", "entra id (f&o)",
                 "dynamics 365 f&o odata", "acumatica api", "atlassian oauth", "jira cloud api"):
        assert f"OK    {what}" in out, out
    assert "CRONUS USA, Inc." in out and "10 ok, 0 failed" in out
    assert "OK    monday.com api" in out and "d365_monday/vendor_invoice_items: Vendor invoices" in out
    assert "endpoint Default/24.200.001" in out
    assert "https://contoso-prod.operations.dynamics.com/.default" in out  # F&O's own scope: env host + /.default
    for secret in ("bc_client_secret", "fo_client_secret", "acumatica_client_secret", "acumatica_password",
                   "monday_token"):
        assert world.stack.secrets[secret] not in out


def test_ping_names_what_fails_without_leaking_the_secret(world, capsys, monkeypatch):
    monkeypatch.setenv("CONNECTOR_BC_CLIENT_SECRET", "wrong-secret-value")
    assert cli.main(["ping"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  entra id (business central)" in out and "AADSTS7000215" in out
    assert "OK    jira cloud api" in out
    assert "wrong-secret-value" not in out


def test_ping_names_the_endpoint_versions_an_acumatica_instance_has(world, capsys, monkeypatch):
    monkeypatch.setenv("CONNECTOR_ACUMATICA_ENDPOINT_VERSION", "23.200.001")
    assert cli.main(["ping"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "acumatica api" in x)
    assert line.lstrip().startswith("FAIL") and "23.200.001" in line and "Default/24.200.001" in line, line
    assert "OK    jira cloud api" in out


def test_vault_cli_lists_names_never_values(world, capsys):
    assert cli.main(["vault", "list"]) == 0
    out = capsys.readouterr().out
    assert "atlassian:jira" in out and "refresh_token" not in out


def test_vault_cli_put_and_rotate_to_a_new_key(world, capsys, monkeypatch):
    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.vault import Vault

    monkeypatch.setenv("MY_SECRET_INPUT", '{"token": "abc-123"}')
    assert cli.main(["vault", "put", "demo:secret", "--from-env", "MY_SECRET_INPUT"]) == 0
    assert cli.main(["vault", "generate-key"]) == 0
    new_key = capsys.readouterr().out.strip().splitlines()[-1]
    old = world.stack.env["CONNECTOR_VAULT_KEYS"]
    monkeypatch.setenv("CONNECTOR_VAULT_KEYS", f"{new_key},{old}")
    assert cli.main(["vault", "rotate"]) == 0
    # the old key can now be dropped: everything decrypts with the new one alone
    vault = Vault(get_engine(world.database_url), [new_key])
    assert vault.get("demo:secret") == {"token": "abc-123"}
    assert "abc-123" not in capsys.readouterr().out


def test_inbox_cli_lists_dead_letters_with_their_error_and_replays_them(world, capsys):
    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox

    inbox = Inbox(get_engine(world.database_url))
    inbox.put("business_central", "k-1", {"resource": "x"})
    [row] = inbox.read_after("business_central", 0, 10)
    dispatch = inbox.dispatch("bc_jira:business_central")
    dispatch.failed([row.id], "run-1", "business_central 403: Forbidden (the app lost its permission)", None)

    assert cli.main(["inbox", "list", "bc_jira"]) == 1          # dead letters: a non-zero exit for scripts
    out = capsys.readouterr().out
    assert f"dead  inbox row {row.id}" in out and "403: Forbidden" in out
    assert '"dead": 1' in out and "bc_jira:jira" in out

    assert cli.main(["inbox", "replay", "bc_jira", "--source", "business_central"]) == 0
    assert "1 dead letter(s) due again now" in capsys.readouterr().out
    assert dispatch.counts()["retry"] == 1 and dispatch.dead_letters() == []
    assert cli.main(["inbox", "list", "bc_jira"]) == 0
