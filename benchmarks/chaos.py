"""make chaos: the exactly-once and no-silent-loss guarantees, driven as a hostile world would.

Four scenarios against the sandboxes and the product as deployed (its receiver as a separate process,
its Dagster definitions on a real instance, its run workers as separate processes):

- ``writers``: N writers (each what one run has: its own clients and lease owner) upsert the same records
  at once, T trials on SQLite and on PostgreSQL, half of them with Jira's search index lagging;
- ``kill``: a notification run's worker is SIGKILLed at a random moment while Jira's search lags 15 s
  and 60 s (small: 2 s); it is re-executed at once, then the ledger retry sensor finishes after the lag
  bound — never a second issue, never a missing one;
- ``forgery``: ≥ 100 forgeries per source, ≥ 100 malformed bodies, and captured Jira JWT / HMAC
  deliveries replayed with new bodies and identifiers; then the resolution runs — the ERP must not act
  while the issues are still open in Jira;
- ``receiver``: 3,000 mixed deliveries (BC, Jira JWT and HMAC, F&O) with 30 % re-deliveries at
  concurrency 32 while one receiver is SIGKILLed mid-load and restarted (SQLite: one receiver;
  PostgreSQL: two receivers on one database). Senders retry like the vendors do until answered.

Prints what each scenario saw, then one JSON line with ``duplicates``, ``lost``, ``acked_not_stored``,
``forged_accepted``, ``erp_actions_without_done``, ``http_5xx`` (all must be 0: the exit status is
non-zero otherwise), the receiver's throughput and p99 latency, and the time each scenario took.
``--small`` runs every scenario small enough for the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COUNTERS = ("duplicates", "lost", "acked_not_stored", "forged_accepted", "erp_actions_without_done", "http_5xx")
INVOICES = "purchase_invoices_awaiting_review"


@dataclass
class Sizes:
    writers: int = 4
    writer_trials: int = 20
    writer_records: int = 20
    kill_lags: tuple[float, ...] = (15.0, 60.0)
    kill_trials: int = 5
    kill_records: int = 120
    forgeries: int = 100
    malformed: int = 100
    replays: int = 50
    deliveries: int = 3000
    concurrency: int = 32


SMALL = Sizes(writers=3, writer_trials=3, writer_records=10, kill_lags=(2.0,), kill_trials=2, kill_records=60,
              forgeries=100, malformed=100, replays=10, deliveries=300, concurrency=16)


@dataclass
class Outcome:
    counters: Counter = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)


# -- worlds ----------------------------------------------------------------------------------------------
@contextmanager
def pg_database() -> Iterator[str]:
    from sandboxes.harness.postgres import throwaway_databases, url_of

    with throwaway_databases("cp_chaos") as [name]:
        yield url_of(name)


@contextmanager
def chaos_world(storage: str, env: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """Sandboxes + receiver on loopback, consent done, the product's definitions on a fresh SQLite instance;
    the project's tables on SQLite or on a throwaway PostgreSQL database."""
    import dagster as dg

    from sandboxes.harness.dagster_driver import DagsterDriver
    from sandboxes.harness.stack import consent, start_stack

    saved = dict(os.environ)
    workdir = Path(tempfile.mkdtemp(prefix=f"connector-chaos-{storage}-"))
    home = workdir / "dagster_home"
    home.mkdir()
    with pg_database() if storage == "postgres" else _nothing(f"sqlite:///{workdir}/connector.sqlite") as db_url:
        os.environ.update({"DAGSTER_HOME": str(home), **(env or {})})
        stack = start_stack(workdir / "stack", database_url=db_url)
        try:
            stack.apply_env()
            consent(stack)
            from connector_pipelines.definitions import defs as load_defs

            with dg.instance_for_test(temp_dir=str(home)) as instance:
                defs = load_defs()
                yield SimpleNamespace(stack=stack, driver=DagsterDriver(defs, instance), defs=defs, db_url=db_url,
                                      workdir=workdir, instance=instance)
        finally:
            stack.stop()
            os.environ.clear()
            os.environ.update(saved)


@contextmanager
def _nothing(value: str) -> Iterator[str]:
    yield value


@contextmanager
def bound_resources(defs) -> Iterator[SimpleNamespace]:
    """What one run has: every resource initialised from the environment, with its own clients and leases
    (closed again at the end, as a run's teardown does)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield SimpleNamespace(**{k: stack.enter_context(v.process_config_and_initialize_cm())
                                 for k, v in defs.resources.items()})


def issues_of(stack, keys: list[str]) -> dict[str, int]:
    from sandboxes.harness.scenario import issues_by_external_id

    found = issues_by_external_id(stack)
    return {k: len(found.get(k, [])) for k in keys}


def seed_invoices(stack, n: int, tag: str) -> list[str]:
    cid = stack.company_id
    return [stack.bc.add_purchase_invoice(cid, number=f"PI-{tag}-{i:04d}", status="Draft", vendorName="Chaos Vendor",
                                          vendorNumber="V77000", totalAmountIncludingTax=10.0 + i,
                                          currencyCode="USD")["id"] for i in range(n)]


# -- 1. parallel writers ---------------------------------------------------------------------------------
def writers(sizes: Sizes) -> Outcome:
    from connector_pipelines.integrations.definition import IntegrationDefinition

    out = Outcome()
    for storage in ("sqlite", "postgres"):
        with chaos_world(storage) as world:
            integration = IntegrationDefinition.model_validate(_definition())
            entity = integration.entity(INVOICES)
            started = time.perf_counter()
            for trial in range(sizes.writer_trials):
                world.stack.jira.search_lag_s = 0.5 if trial % 2 else 0.0
                ids = seed_invoices(world.stack, sizes.writer_records, f"W{storage[0]}{trial}")
                world.stack.bc.drop_pending_notifications()
                errors = _writers_at_once(world, integration, entity, ids, sizes.writers)
                counts = issues_of(world.stack, [f"bc:purchaseInvoices:{i}" for i in ids])
                out.counters["duplicates"] += sum(max(0, c - 1) for c in counts.values())
                out.counters["lost"] += sum(1 for c in counts.values() if c == 0)
                out.counters["writer_crashes"] += len(errors)
                for exc in errors[:3]:
                    print(f"  writer crashed: {type(exc).__name__}: {exc}")
            out.figures[f"writers_{storage}_s"] = round(time.perf_counter() - started, 1)
    out.figures["writers"] = f"{sizes.writers} writers x {sizes.writer_trials} trials x 2 databases"
    return out


def _writers_at_once(world, integration, entity, ids: list[str], n_writers: int) -> list[BaseException]:
    """n runs' writers, each with its own clients and lease owner, upserting the same records together."""
    from connector_pipelines.components.integration_pair import make_source, make_writer

    barrier = threading.Barrier(n_writers)
    errors: list[BaseException] = []

    def one_run(n: int) -> None:
        try:
            with bound_resources(world.defs) as resources:
                source = make_source(integration, resources)
                writer = make_writer(integration, resources, f"chaos-{n}")
                barrier.wait()
                writer.upsert(entity, source.fetch_by_ids(entity, ids))
        except BaseException as exc:  # noqa: BLE001 - a crashed writer is what this scenario counts
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(n,)) for n in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def _definition() -> dict:
    import yaml

    return yaml.safe_load((REPO / "connector_pipelines" / "defs" / "bc_jira" / "defs.yaml").read_text())["attributes"]


# -- 2. kill -9 at random points under search lag ---------------------------------------------------------
WORKER = """
import json, sys
import dagster as dg
from connector_pipelines.definitions import defs
job = defs().resolve_job_def("bc_jira__notification_job")
job.execute_in_process(run_config=json.loads(sys.argv[1]), instance=dg.DagsterInstance.get(), raise_on_error=False)
"""
NOTIFY_OP = "bc_jira__sync_notified_records"


def kill(sizes: Sizes, rng: random.Random) -> Outcome:
    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox
    from connector_pipelines.core.ledger import Ledger
    from sandboxes.harness.scenario import register_webhooks

    out = Outcome()
    for lag in sizes.kill_lags:
        env = {"CONNECTOR_SEARCH_LAG_BOUND_S": str(lag + 3), "CONNECTOR_LEASE_TTL_S": "2",
               "CONNECTOR_RETRY_BASE_S": "1"}
        with chaos_world("sqlite", env) as world:
            register_webhooks(world.driver)
            world.stack.jira.search_lag_s = lag
            world.stack.jira.faults.latency_s = 0.25   # a create phase long enough to be killed in
            inbox, ledger = Inbox(get_engine(world.db_url)), Ledger(get_engine(world.db_url))
            job = world.defs.resolve_job_def("bc_jira__notification_job")
            started = time.perf_counter()
            writes = (("POST", "/ex/jira/{cloudId}/rest/api/3/search/jql"),
                      ("POST", "/ex/jira/{cloudId}/rest/api/3/issue/bulk"))
            points: list[dict[str, Any]] = []   # where each kill landed, and what it left behind
            for trial in range(sizes.kill_trials):
                seen = {r.id for r in inbox.read_after("business_central", 0, 1_000_000)}
                ids = seed_invoices(world.stack, sizes.kill_records, f"K{int(lag)}-{trial}")
                world.stack.bc.deliver_notifications()
                rows = [r.id for r in inbox.read_after("business_central", 0, 1_000_000) if r.id not in seen]
                config = {"ops": {NOTIFY_OP: {"config": {"inbox_ids": rows}}}}
                # A random point of the write phase: after the n-th Jira search or bulk-create answer (one of
                # each per 50 records) plus a random delay — in a later call, or between Jira's answer and
                # the ledger commit.
                n, jitter = rng.randint(1, 2 * -(-sizes.kill_records // 50)), rng.uniform(0.0, 0.4)
                before = sum(world.stack.jira.calls[w] for w in writes)
                proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config)], cwd=REPO,
                                        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 120
                while (sum(world.stack.jira.calls[w] for w in writes) - before < n and proc.poll() is None
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
                time.sleep(jitter)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                keys = [f"bc:purchaseInvoices:{i}" for i in ids]
                left = ledger.get_many("bc_jira", keys)
                issues = sum(issues_of(world.stack, keys).values())
                done = sum(1 for e in left.values() if e.state == "done")
                points.append({"after_jira_answers": n, "plus_s": round(jitter, 2), "issues": issues,
                               "intents": sum(1 for e in left.values() if e.state == "intent"), "done": done,
                               "answer_lost": issues - done})
                # re-executed at once (what a person or the inbox sensor does), then the ledger retry
                # sensor finishes what had to wait for the search lag bound
                job.execute_in_process(run_config=config, instance=world.instance, raise_on_error=False)
                _finish_retries(world, ledger, keys, deadline_s=lag + 60)
                counts = issues_of(world.stack, keys)
                out.counters["duplicates"] += sum(max(0, c - 1) for c in counts.values())
                out.counters["lost"] += sum(1 for c in counts.values() if c == 0)
            out.figures[f"kill_lag_{int(lag)}s"] = {"trials": sizes.kill_trials, "killed_at": points,
                                                    "took_s": round(time.perf_counter() - started, 1)}
    return out


def _finish_retries(world, ledger, keys: list[str], deadline_s: float) -> None:
    """Tick the ledger retry sensor whenever a row of these keys is due, until none waits any more."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        rows = [e for e in ledger.get_many("bc_jira", keys).values() if e.retry_after is not None
                and e.state in ("intent", "failed")]
        if not rows:
            return
        from connector_pipelines.core.db import utcnow

        wait = max(0.0, min((e.retry_after - utcnow()).total_seconds() for e in rows))
        time.sleep(min(wait + 0.2, 5))
        world.driver.tick("bc_jira__ledger_retry_sensor", raise_on_error=False)


# -- 3. forgeries, malformed bodies and replays ---------------------------------------------------------------
def forgery(sizes: Sizes, rng: random.Random) -> Outcome:
    import httpx
    import jwt

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox
    from sandboxes.harness import scenario as sc
    from sandboxes.harness.stack import CLOUD_ID, FO_SECRET_HEADER, JIRA_CLIENT_ID

    out = Outcome()
    with chaos_world("sqlite") as world:
        stack = world.stack
        sc.register_webhooks(world.driver)
        seeded = sc.seed_exceptions(stack)
        stack.deliver_all()
        world.driver.tick(sc.BC_SENSOR)
        sc.poll_now(world.driver)
        found = sc.issues_by_external_id(stack)
        invoice_key = found[f"bc:purchaseInvoices:{seeded['invoice']['id']}"][0]["key"]
        vendor_key = found[f"bc:vendors:{seeded['blocked']['id']}"][0]["key"]
        inbox = Inbox(get_engine(world.db_url))
        base = stack.urls["receiver"]
        secrets = stack.secrets
        before = {s: inbox.count(s) for s in ("business_central", "jira", "finance_operations")}
        client = httpx.Client(timeout=30)

        def send(path: str, body: bytes, headers: dict[str, str], forged: bool) -> None:
            r = client.post(base + path, content=body, headers={"Content-Type": "application/json", **headers})
            if r.status_code >= 500:
                out.counters["http_5xx"] += 1
            if forged and 200 <= r.status_code < 300 and r.json().get("stored"):
                out.counters["forged_accepted"] += 1
            out.counters[f"answer_{r.status_code}"] += 1

        def done_event(key: str) -> bytes:
            return json.dumps({"timestamp": int(time.time() * 1000), "webhookEvent": "jira:issue_updated",
                               "issue": {"key": key, "fields": {"project": {"key": "FIN"}, "status": {
                                   "name": "Done", "statusCategory": {"key": "done"}}}},
                               "changelog": {"items": [{"field": "status", "toString": "Done"}]},
                               "nonce": uuid.uuid4().hex}).encode()

        bc_resource = f"/api/v2.0/companies({stack.company_id})/purchaseInvoices({seeded['invoice']['id']})"
        for n in range(sizes.forgeries):
            bc = {"value": [{"subscriptionId": "s", "clientState": uuid.uuid4().hex, "resource": bc_resource,
                             "changeType": "updated", "lastModifiedDateTime": f"2026-12-03T10:{n % 60:02d}:00Z"}]}
            send("/webhooks/business-central", json.dumps(bc).encode(), {}, True)
            body = done_event(rng.choice([invoice_key, vendor_key]))
            wrong = jwt.encode({"iss": JIRA_CLIENT_ID, "iat": int(time.time()), "exp": int(time.time()) + 300},
                               uuid.uuid4().hex, algorithm="HS256")
            stale = jwt.encode({"iss": JIRA_CLIENT_ID, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
                               secrets["jira_client_secret"], algorithm="HS256")
            for headers in ({"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Bearer {stale}"},
                            {"X-Hub-Signature": "sha256=" + hashlib.sha256(body).hexdigest()}, {}):
                send("/webhooks/jira", body, {**headers, "X-Atlassian-Webhook-Identifier": uuid.uuid4().hex}, True)
            fo = {"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent", "ControlNumber": 900000 + n,
                  "LegalEntity": "usmf", "PurchaseOrderNumber": "PO-X"}
            send("/webhooks/d365-business-events", json.dumps(fo).encode(), {FO_SECRET_HEADER: uuid.uuid4().hex}, True)

        state = secrets["bc_client_state"]
        malformed_bodies = [b"{", b"[]", b"null", b'{"value": "x"}', b'{"value": []}', b"\xff\xfe",
                            b'{"value": [{"clientState": "' + state.encode() + b'"}]}', b"[" * 5000]
        for n in range(sizes.malformed):
            send("/webhooks/business-central", malformed_bodies[n % len(malformed_bodies)], {}, True)
            send("/webhooks/business-central", b"value=1", {"Content-Type": "text/plain"}, True)
        # authenticated, with bytes a database refuses: stored escaped, never a 5xx
        for n in range(10):
            entry = {"subscriptionId": "s\u0000", "clientState": state, "changeType": "updated",
                     "resource": f"/api/v2.0/companies(x)/vendors(\udc80{n})", "lastModifiedDateTime": "x"}
            send("/webhooks/business-central", json.dumps({"value": [entry]}).encode(), {}, False)

        # replays: a genuine JWT delivery and a genuine HMAC delivery, captured, re-sent with new bodies and ids
        stack.jira.add_admin_webhook(CLOUD_ID, base + "/webhooks/jira", secrets["jira_webhook_secret"],
                                     ["comment_created"])
        stack.jira.comment_as_user(CLOUD_ID, invoice_key, "checking")
        captured = list(stack.jira.pending_deliveries)
        stack.jira.deliver_pending()
        # Only deliveries the receiver took are replays when sent again; one whose genuine delivery failed (a
        # timeout on a loaded box) would be seen for the first time, and rightly stored.
        captured = [d for d in captured if isinstance(d.last_status, int) and 200 <= d.last_status < 300]
        signals = 0
        for delivery in captured:
            headers = stack.jira.delivery_headers(delivery, 0)
            for n in range(sizes.replays):
                # the captured delivery itself under a new identifier: must be refused as a replay
                send("/webhooks/jira", delivery.body, {**headers, "X-Atlassian-Webhook-Identifier": uuid.uuid4().hex},
                     True)
                if "Authorization" in headers and n % 2 == 0:
                    # a forged body under the captured token: Jira's JWT may not be unique per delivery, so it
                    # is stored as a signal only; the resolution run must refuse to act on it
                    send("/webhooks/jira", done_event(rng.choice([invoice_key, vendor_key])),
                         {**headers, "X-Atlassian-Webhook-Identifier": uuid.uuid4().hex}, False)
                    signals += 1
        # a forged Done that gets past the receiver (signed with the real secret, as a leaked one would be)
        for key in (invoice_key, vendor_key):
            now = int(time.time())
            token = jwt.encode({"iss": JIRA_CLIENT_ID, "iat": now, "exp": now + 300, "jti": key},
                               secrets["jira_client_secret"], algorithm="HS256")
            client.post(base + "/webhooks/jira", content=done_event(key), headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "X-Atlassian-Webhook-Identifier": uuid.uuid4().hex})
        client.close()

        refused = 0
        for run in world.driver.tick(sc.JIRA_SENSOR, raise_on_error=False).runs:
            outputs = [e for e in run.all_events if e.event_type_value == "STEP_OUTPUT"]
            refused += sum(e.event_specific_data.metadata["refused_not_confirmed_by_jira"].value for e in outputs)
        cid = stack.company_id
        posted = stack.bc.get_record(cid, "purchaseInvoices", seeded["invoice"]["id"])["status"] != "Draft"
        unblocked = stack.bc.get_record(cid, "vendors", seeded["blocked"]["id"])["blocked"] != "All"
        out.counters["erp_actions_without_done"] += int(posted) + int(unblocked) + stack.bc.action_calls("post")
        new_rows = {s: inbox.count(s) - before[s] for s in before}
        out.figures["forgery"] = {"forgeries_per_source": sizes.forgeries, "malformed": sizes.malformed * 2,
                                  "replays": sizes.replays * len(captured), "forged_bodies_under_a_captured_jwt": signals,
                                  "refused_by_jira_reread": refused,
                                  "rows_stored": new_rows,
                                  "answers": {k: v for k, v in out.counters.items() if k.startswith("answer_")}}
        for k in [k for k in out.counters if k.startswith("answer_")]:
            del out.counters[k]
    return out


# -- 4. the receiver under load, killed mid-load -------------------------------------------------------------
@dataclass
class Delivery:
    path: str
    body: bytes
    headers: dict[str, str]
    source: str
    keys: list[str]
    acked: bool = False


def make_deliveries(n: int, secrets: dict[str, str], rng: random.Random) -> list[Delivery]:
    import jwt

    from connector_pipelines.receiver.app import bounded_key
    from sandboxes.harness.stack import FO_SECRET_HEADER, JIRA_CLIENT_ID

    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            entries = [{"subscriptionId": f"sub-{i % 3}", "clientState": secrets["bc_client_state"],
                        "resource": f"/api/v2.0/companies(c1)/purchaseInvoices(load-{i}-{j})", "changeType": "updated",
                        "lastModifiedDateTime": "2026-12-03T10:00:00Z"} for j in range(rng.randint(1, 5))]
            keys = [bounded_key(f"{e['subscriptionId']}|{e['resource']}|{e['lastModifiedDateTime']}|updated")
                    for e in entries]
            out.append(Delivery("/webhooks/business-central", json.dumps({"value": entries}).encode(),
                                {"Content-Type": "application/json"}, "business_central", keys))
        elif kind in (1, 2):
            ident = str(uuid.uuid4())
            body = json.dumps({"timestamp": i, "webhookEvent": "comment_created",
                               "issue": {"key": f"OPS-{i}"}, "comment": {"id": str(i)}}).encode()
            headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": ident}
            if kind == 1:
                now = int(time.time())
                headers["Authorization"] = "Bearer " + jwt.encode(
                    {"iss": JIRA_CLIENT_ID, "iat": now, "exp": now + 900, "jti": ident}, secrets["jira_client_secret"],
                    algorithm="HS256")
            else:
                digest = hmac.new(secrets["jira_webhook_secret"].encode(), body, hashlib.sha256).hexdigest()
                headers["X-Hub-Signature"] = f"sha256={digest}"
            out.append(Delivery("/webhooks/jira", body, headers, "jira", [ident]))
        else:
            events = [{"BusinessEventId": "PurchaseOrderConfirmedBusinessEvent", "ControlNumber": 10_000_000 + i * 10 + j,
                       "LegalEntity": "usmf", "PurchaseOrderNumber": f"PO-L{i}"} for j in range(rng.randint(1, 3))]
            out.append(Delivery("/webhooks/d365-business-events", json.dumps(events).encode(),
                                {"Content-Type": "application/json", FO_SECRET_HEADER: secrets["fo_events_secret"]},
                                "finance_operations", [str(e["ControlNumber"]) for e in events]))
    return out


class Receiver:
    """The product's receiver as its own process (``python -m connector_pipelines.receiver``)."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Receiver:
        import httpx

        with self.log.open("a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "connector_pipelines.receiver", "--port",
                                          str(self.port)], cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"receiver on {self.port} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def receiver(sizes: Sizes, rng: random.Random) -> Outcome:
    import secrets as token_source

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox
    from sandboxes.common import free_port
    from sandboxes.harness.stack import FO_SECRET_HEADER

    out = Outcome()
    for storage, count in (("sqlite", 1), ("postgres", 2)):
        workdir = Path(tempfile.mkdtemp(prefix=f"connector-chaos-receiver-{storage}-"))
        with pg_database() if storage == "postgres" else _nothing(f"sqlite:///{workdir}/inbox.sqlite") as db_url:
            secrets = {k: token_source.token_urlsafe(24) for k in ("bc_client_state", "jira_client_secret",
                                                                   "jira_webhook_secret", "fo_events_secret")}
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")} | {
                "CONNECTOR_DATABASE_URL": db_url, "CONNECTOR_BC_CLIENT_STATE": secrets["bc_client_state"],
                "CONNECTOR_JIRA_CLIENT_SECRET": secrets["jira_client_secret"],
                "CONNECTOR_JIRA_WEBHOOK_SECRET": secrets["jira_webhook_secret"],
                "CONNECTOR_FO_EVENTS_SECRET": secrets["fo_events_secret"],
                "CONNECTOR_FO_EVENTS_SECRET_HEADER": FO_SECRET_HEADER, "DAGSTER_HOME": str(workdir)}
            inbox = Inbox(get_engine(db_url))        # creates the tables before the receivers race to
            receivers = [Receiver(free_port(), env, workdir / f"receiver-{n}.log").start() for n in range(count)]
            try:
                deliveries = make_deliveries(sizes.deliveries, secrets, rng)
                sends = deliveries + rng.sample(deliveries, int(0.3 * len(deliveries)))   # 30 % re-deliveries
                rng.shuffle(sends)
                stats = asyncio.run(_load(sends, receivers, sizes.concurrency, kill_after=len(sends) * 2 // 5))
            finally:
                for r in receivers:
                    r.stop()
            stored = {s: {r.dedupe_key for r in inbox.read_after(s, 0, 10_000_000)}
                      for s in ("business_central", "jira", "finance_operations")}
            acked_not_stored = sum(1 for d in deliveries if d.acked and not set(d.keys) <= stored[d.source])
            out.counters["acked_not_stored"] += acked_not_stored
            out.counters["lost"] += sum(1 for d in deliveries if not d.acked)
            out.counters["http_5xx"] += stats["http_5xx"]
            latencies = sorted(stats["latencies"])
            out.figures[f"receiver_{storage}"] = {
                "receivers": count, "deliveries": len(deliveries), "sent_with_redeliveries": len(sends),
                "deliveries_per_s": round(len(sends) / stats["wall_s"], 1),
                "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
                "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
                "connection_errors_retried": stats["connection_errors"], "killed_mid_load": True}
            inbox.engine.dispose()
    return out


async def _load(sends: list[Delivery], receivers: list[Receiver], concurrency: int, kill_after: int) -> dict:
    import httpx

    stats: dict[str, Any] = {"http_5xx": 0, "connection_errors": 0, "latencies": []}
    queue: asyncio.Queue = asyncio.Queue()
    for d in sends:
        queue.put_nowait(d)
    done = 0
    killed = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def restart(victim: Receiver) -> None:
        await loop.run_in_executor(None, victim.kill)
        await asyncio.sleep(1.0)
        await loop.run_in_executor(None, victim.start)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while True:
            try:
                d = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:                  # like a vendor: retry until answered
                target = random.choice([r for r in receivers if r.proc and r.proc.poll() is None] or receivers)
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"http://127.0.0.1:{target.port}{d.path}", content=d.body, headers=d.headers)
                except httpx.HTTPError:
                    stats["connection_errors"] += 1
                    await asyncio.sleep(0.2)
                    continue
                if r.status_code >= 500:
                    stats["http_5xx"] += 1
                    await asyncio.sleep(0.2)
                    continue
                stats["latencies"].append(time.perf_counter() - t0)
                if 200 <= r.status_code < 300:
                    d.acked = True
                break
            done += 1
            if done >= kill_after and not killed.is_set():
                killed.set()
                asyncio.ensure_future(restart(receivers[0]))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    stats["wall_s"] = time.perf_counter() - started
    return stats


# -- main --------------------------------------------------------------------------------------------------
SCENARIOS = ("writers", "kill", "forgery", "receiver")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos")
    parser.add_argument("--small", action="store_true", help="every scenario, small enough for the test suite")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("connector_pipelines").setLevel(logging.ERROR)
    sizes = SMALL if args.small else Sizes()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    counters: Counter = Counter({k: 0 for k in COUNTERS})
    figures: dict[str, Any] = {"seed": seed, "small": args.small}
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        t0 = time.perf_counter()
        outcome = {"writers": lambda: writers(sizes), "kill": lambda: kill(sizes, rng),
                   "forgery": lambda: forgery(sizes, rng), "receiver": lambda: receiver(sizes, rng)}[name]()
        took = round(time.perf_counter() - t0, 1)
        print(f"{name}: {dict(outcome.counters)} {json.dumps(outcome.figures)} ({took} s)", flush=True)
        counters.update(outcome.counters)
        figures.update(outcome.figures)
        figures[f"{name}_s"] = took
    result = {**{k: counters[k] for k in COUNTERS}, "writer_crashes": counters["writer_crashes"], **figures}
    for storage in ("sqlite", "postgres"):
        rec = figures.get(f"receiver_{storage}")
        if rec:
            result[f"receiver_{storage}_per_s"] = rec["deliveries_per_s"]
            result[f"receiver_{storage}_p99_ms"] = rec["p99_ms"]
    print(json.dumps(result))
    return result


def all_zero(result: dict) -> bool:
    return all(result[k] == 0 for k in COUNTERS) and result.get("writer_crashes", 0) == 0


if __name__ == "__main__":
    sys.exit(0 if all_zero(main()) else 1)
