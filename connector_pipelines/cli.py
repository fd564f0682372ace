"""`connector-pipelines`: the operator's command line.

- ``ping``: check every configured connection (get a token, make one cheap read) and say plainly what
  works and what does not — the first thing to run against real systems.
- ``vault``: generate-key, put, list (names only), delete, rotate.
- ``jira consent``: the Atlassian OAuth 2.0 (3LO) consent flow with a local callback; the rotating
  refresh token goes straight into the vault.
- ``ledger``: what the ledger holds per state, and the failed / quarantined records with their errors.
- ``inbox``: per reader (pair + source), what it owes and its dead letters; replay them.

A mistake the operator can fix (an unknown pair, a setting or the database not configured, a vault key
missing) ends the command with one line saying what to do and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable

from connector_pipelines.components.resources import ConnectorStore, MissingSetting, resources_from_env
from connector_pipelines.core.db import DatabaseNotConfigured
from connector_pipelines.core.vault import VaultError
from connector_pipelines.systems.atlassian.oauth import DEFAULT_CONSENT_PORT


class UsageError(Exception):
    """A command asked for something that does not exist (an unknown pair or source): said in one line."""


# What stops a command with one line and exit status 2 (main): the operator fixes the setting and runs it again.
OPERATOR_ERRORS = (UsageError, MissingSetting, DatabaseNotConfigured, VaultError)


def _line(ok: bool, what: str, detail: str) -> bool:
    print(f"  {'OK  ' if ok else 'FAIL'}  {what:<28} {detail}")
    return ok


def _check(what: str, fn: Callable[[], str]) -> bool:
    try:
        return _line(True, what, fn())
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none aborts the others
        return _line(False, what, f"{type(exc).__name__}: {exc}")


def cmd_ping(_args: argparse.Namespace) -> int:
    print("connector-pipelines ping")
    results = []
    try:
        res = resources_from_env(for_dagster=False)
    except Exception as exc:  # noqa: BLE001
        print(f"  FAIL  configuration                {exc}")
        return 1
    store = res["connector_store"]

    def database() -> str:
        engine = store.engine()
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return f"{engine.dialect.name} reachable, project tables present"

    results.append(_check("database", database))

    def vault() -> str:
        v = store.vault()
        names = v.names()
        for n in names:
            v.get(n)
        return f"{len(names)} credential(s), all decrypt with the configured keys"

    results.append(_check("vault", vault))

    bc = res.get("business_central")
    if bc is None:
        results.append(_line(False, "business central", "not configured (CONNECTOR_BC_* variables missing)"))
    else:
        def bc_token() -> str:
            bc.token_provider().get_token()
            return f"token from {bc.authority_host} for {bc.scope}"

        def bc_read() -> str:
            companies = bc.client().companies()
            return f"{len(companies)} compan{'y' if len(companies) == 1 else 'ies'}: " + ", ".join(
                c.get("name", "?") for c in companies[:5])

        results.append(_check("entra id (business central)", bc_token))
        results.append(_check("business central api", bc_read))

    fo = res.get("finance_operations")
    if fo is None:
        results.append(_line(False, "dynamics 365 f&o", "not configured (CONNECTOR_FO_* variables missing)"))
    else:
        def fo_token() -> str:
            fo.token_provider().get_token()
            return f"token from {fo.authority_host} for {fo.token_scope()}"

        def fo_read() -> str:
            sets = fo.client().metadata().entity_sets
            wanted = ("VendorInvoiceHeaders", "PurchaseOrderHeadersV2")
            missing = [s for s in wanted if s not in sets]
            if missing:
                raise RuntimeError(f"$metadata lacks {', '.join(missing)}")
            return f"$metadata lists {len(sets)} entity sets incl. {', '.join(wanted)}"

        results.append(_check("entra id (f&o)", fo_token))
        results.append(_check("dynamics 365 f&o odata", fo_read))

    acu = res.get("acumatica")
    if acu is None:
        results.append(_line(False, "acumatica", "not configured (CONNECTOR_ACUMATICA_* variables missing)"))
    else:
        def acu_read() -> str:
            client = acu.client(store.vault())
            try:
                found = client.ping()
            finally:
                client.close()
            return (f"endpoint {client.endpoint} on {acu.instance_url} (tenant {acu.tenant or '-'}, "
                    f"{acu.auth_mode} sign-in){'; a vendor read' if found.get('vendor') else ''}")

        results.append(_check("acumatica api", acu_read))

    monday = res.get("monday")
    monday_pairs = [d for d in _definitions() if d.target.system == "monday"]
    if monday is not None and (monday.token or monday_pairs):
        def monday_read() -> str:
            from connector_pipelines.integrations.monday_target import MondayBackend

            client = monday.client(store.vault())
            me = client.query("query { me { id name } }").get("me") or {}
            boards = []
            for definition in monday_pairs:   # every configured board has its columns, with the declared types
                boards += [f"{definition.name}/{entity}: {board}"
                           for entity, board in MondayBackend(client, definition).check().items()]
            return (f"API {monday.api_version} as user {me.get('id', '?')}; boards "
                    + (", ".join(boards) if boards else "(none configured)"))

        results.append(_check("monday.com api", monday_read))

    jira = res.get("jira")
    if jira is None:
        results.append(_line(False, "jira", "not configured (CONNECTOR_JIRA_* variables missing)"))
    else:
        def jira_token() -> str:
            tokens = jira.token_provider(store.vault())
            tokens.get_token()
            return f"access token for site {tokens.cloud_id()} (refresh token rotated in the vault if due)"

        def jira_read() -> str:
            me = jira.client(store.vault()).myself()
            return f"authenticated as {me.get('displayName', me.get('accountId', '?'))} on {jira.site_url}"

        results.append(_check("atlassian oauth", jira_token))
        results.append(_check("jira cloud api", jira_read))

    failed = results.count(False)
    print(f"{len(results) - failed} ok, {failed} failed")
    return 1 if failed else 0


def _definitions() -> list:
    """Every pair's definition, as the code location loads them (defs/<pair>/defs.yaml)."""
    from pathlib import Path

    import yaml

    from connector_pipelines.integrations.definition import IntegrationDefinition

    folder = Path(__file__).resolve().parent / "defs"
    return [IntegrationDefinition.model_validate(yaml.safe_load(f.read_text())["attributes"])
            for f in sorted(folder.glob("*/defs.yaml"))]


def _pair(name: str):
    """The definition of pair ``name``; an unknown name stops the command, naming the pairs that exist."""
    pairs = {d.name: d for d in _definitions()}
    if name not in pairs:
        raise UsageError(f"no integration pair {name!r}; the pairs are: {', '.join(sorted(pairs))}")
    return pairs[name]


def _store() -> ConnectorStore:
    """The project's database (inbox, ledger, vault) for a command; opened at once, so a missing
    DAGSTER_HOME / CONNECTOR_DATABASE_URL is said before anything else is done."""
    store = resources_from_env(for_dagster=False)["connector_store"]
    store.engine()
    return store


def cmd_vault(args: argparse.Namespace) -> int:
    from connector_pipelines.core.vault import Vault

    if args.vault_cmd == "generate-key":
        print(Vault.generate_key())
        return 0
    vault = _store().vault()
    if args.vault_cmd == "list":
        for name in vault.names():
            print(name)
    elif args.vault_cmd == "put":
        if args.from_env:
            value = os.environ.get(args.from_env)
            if value is None:
                print(f"{args.from_env} is not set", file=sys.stderr)
                return 2
        elif not sys.stdin.isatty():
            value = sys.stdin.read().rstrip("\n")
        else:
            value = getpass.getpass(f"value for {args.name}: ")
        try:
            parsed = json.loads(value)
            value = parsed if isinstance(parsed, dict) else value
        except ValueError:
            pass
        vault.put(args.name, value)
        print(f"stored {args.name} (encrypted)")
    elif args.vault_cmd == "delete":
        vault.delete(args.name)
        print(f"deleted {args.name}")
    elif args.vault_cmd == "rotate":
        print(f"re-encrypted {vault.rotate()} credential(s) with the primary key")
    return 0


def cmd_jira_consent(args: argparse.Namespace) -> int:
    from connector_pipelines.systems.atlassian.oauth import run_consent_flow

    res = resources_from_env(for_dagster=False)
    jira = res.get("jira")
    if jira is None:
        print("set CONNECTOR_JIRA_CLIENT_ID, CONNECTOR_JIRA_CLIENT_SECRET and CONNECTOR_JIRA_SITE_URL first",
              file=sys.stderr)
        return 2
    site = run_consent_flow(_store().vault(), jira.credential_name, jira.client_id, jira.client_secret,
                            auth_base=jira.auth_url, api_base=jira.api_url, site_url=jira.site_url,
                            scopes=args.scopes.split(), port=args.port, open_browser=not args.no_browser)
    print(f"consent stored for {site.url} (cloudId {site.id}) in vault entry {jira.credential_name}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    _pair(args.integration)
    ledger = _store().ledger()
    print(json.dumps(ledger.counts(args.integration), indent=2))
    for state in ("intent", "failed", "quarantined"):
        for e in ledger.in_state(args.integration, state):
            when = f"retry after {e.retry_after:%Y-%m-%d %H:%M:%S}Z" if e.retry_after else "needs a person"
            if state == "intent" and not e.retry_after:
                when = "being written"
            context = e.context or {}
            document = context.get("summary") or context.get("document") or ""   # the record in business words
            print(f"{state:<11} {e.source_key:<60} attempts={e.attempts} {when} run={e.run_id} "
                  f"{document + ' — ' if document else ''}{e.last_error or ''}")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    """Per reader (pair + source): what it owes, and its dead letters with their errors; replay on demand."""
    from connector_pipelines.components.integration_pair import inbox_sources

    readable = [s for s, _label in inbox_sources(_pair(args.integration))]
    if args.source and args.source not in readable:
        raise UsageError(f"{args.integration} reads no {args.source!r} inbox; its inboxes are: {', '.join(readable)}")
    sources = [args.source] if args.source else readable
    inbox = _store().inbox()
    status = 0
    for source in sources:
        dispatch = inbox.dispatch(f"{args.integration}:{source}")
        if args.inbox_cmd == "replay":
            ids = [int(i) for i in args.ids.split(",")] if args.ids else None
            print(f"{args.integration}:{source}: {dispatch.replay(ids)} dead letter(s) due again now")
            continue
        counts = dispatch.counts()
        print(f"{args.integration}:{source} {json.dumps(counts)}")
        for d in dispatch.dead_letters(limit=args.limit):
            print(f"  dead  inbox row {d.inbox_id:<8} attempts={d.attempts} run={d.run_id} {d.error or ''}")
        status = status or (1 if counts["dead"] else 0)
    return status


JIRA_SCOPES = "read:jira-work write:jira-work read:jira-user manage:jira-webhook offline_access"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="connector-pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping", help="check every configured connection").set_defaults(fn=cmd_ping)

    v = sub.add_parser("vault", help="encrypted credentials")
    vs = v.add_subparsers(dest="vault_cmd", required=True)
    vs.add_parser("generate-key", help="print a new Fernet key for CONNECTOR_VAULT_KEYS")
    vs.add_parser("list", help="credential names (never values)")
    p = vs.add_parser("put", help="store a credential (value from stdin, a prompt, or --from-env)")
    p.add_argument("name")
    p.add_argument("--from-env", metavar="VAR")
    d = vs.add_parser("delete")
    d.add_argument("name")
    vs.add_parser("rotate", help="re-encrypt everything with the first key of CONNECTOR_VAULT_KEYS")
    v.set_defaults(fn=cmd_vault)

    j = sub.add_parser("jira", help="Jira Cloud")
    js = j.add_subparsers(dest="jira_cmd", required=True)
    c = js.add_parser("consent", help="run the OAuth 2.0 (3LO) consent flow and store the tokens in the vault")
    c.add_argument("--port", type=int, default=DEFAULT_CONSENT_PORT,
                   help="local callback port; the app's callback URL is http://localhost:<port>/callback")
    c.add_argument("--no-browser", action="store_true")
    c.add_argument("--scopes", default=JIRA_SCOPES)
    c.set_defaults(fn=cmd_jira_consent)

    led = sub.add_parser("ledger", help="record states and failures of one integration")
    led.add_argument("integration", help="the pair, e.g. bc_jira (an unknown name lists the pairs)")
    led.set_defaults(fn=cmd_ledger)

    ib = sub.add_parser("inbox", help="deliveries an integration owes work on, and its dead letters")
    ibs = ib.add_subparsers(dest="inbox_cmd", required=True)
    for name, text in (("list", "counts per reader and the dead letters with their errors (exit 1 if any)"),
                       ("replay", "make dead letters due again now, with a fresh retry budget")):
        cmd = ibs.add_parser(name, help=text)
        cmd.add_argument("integration", help="e.g. bc_jira")
        cmd.add_argument("--source", help="one of the pair's inboxes: its source (business_central, finance_operations, "
                                          "acumatica) or its target (jira, monday); default: each inbox it reads")
        if name == "replay":
            cmd.add_argument("--ids", help="comma-separated inbox row ids (default: every dead letter)")
        else:
            cmd.add_argument("--limit", type=int, default=50)
    ib.set_defaults(fn=cmd_inbox)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except OPERATOR_ERRORS as exc:
        print(f"connector-pipelines {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
