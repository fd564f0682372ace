"""A control channel into a running sandbox world, for a driver in another process (the benchmarks).

``python -m sandboxes.harness --control`` serves, beside the sandboxes and the receiver, a small admin
HTTP app on loopback on its own port (never part of an emulated vendor API surface). Through it a
benchmark seeds records, sets latency, triggers deliveries and reads call counts, the in-flight
concurrency the sandboxes saw and the issues Jira holds — so the pipeline runs in the benchmark's process
and the sandboxes' CPU (request validation, filter evaluation) is never counted against it.

``InFlightMeter`` is ASGI middleware the harness wraps around every vendor sandbox app: it counts the
requests (per vendor too), the most in flight at once, and the time-weighted mean in flight while any is in flight;
and the CPU the harness process spent since the meter was reset (the sandboxes' own cost per call: request
validation, filter evaluation, rendering — what the pipeline waits for beyond the injected latency).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

VENDORS = ("entra", "bc", "fo", "atlassian", "jira")


class InFlightMeter:
    """Requests seen, the most in flight at once, and Σ request time / busy time (the mean in flight)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_name: dict[str, int] = {}
            self.in_flight = 0
            self.max_in_flight = 0
            self.request_s = 0.0      # Σ of every request's duration
            self.busy_s = 0.0         # time with at least one request in flight
            self._busy_since = time.perf_counter()
            self._cpu_since = time.process_time()   # this process's CPU (every thread) since the reset

    def wrap(self, app: ASGIApp, name: str) -> ASGIApp:
        async def metered(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = self._enter(name)
            try:
                await app(scope, receive, send)
            finally:
                self._leave(start)
        return metered

    def _enter(self, name: str) -> float:
        now = time.perf_counter()
        with self._lock:
            self.by_name[name] = self.by_name.get(name, 0) + 1
            if self.in_flight == 0:
                self._busy_since = now
            self.in_flight += 1
            self.requests += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return now

    def _leave(self, start: float) -> None:
        now = time.perf_counter()
        with self._lock:
            self.in_flight -= 1
            self.request_s += now - start
            if self.in_flight == 0:
                self.busy_s += now - self._busy_since

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            busy = self.busy_s + (time.perf_counter() - self._busy_since if self.in_flight else 0.0)
            return {"requests": self.requests, "by_vendor": dict(self.by_name), "max_in_flight": self.max_in_flight,
                    "mean_in_flight": round(self.request_s / busy, 3) if busy > 0 else 0.0,
                    "request_s": round(self.request_s, 4), "busy_s": round(busy, 4),
                    "cpu_s": round(time.process_time() - self._cpu_since, 4)}


def control_app(stack) -> Starlette:
    """The admin endpoints over ``stack`` (a sandboxes.harness.stack.Stack)."""
    from sandboxes.harness import scenario as sc

    def vendors() -> dict[str, Any]:
        return {"entra": stack.entra, "bc": stack.bc, "fo": stack.fo, "acumatica": stack.acumatica,
                "monday": stack.monday, "atlassian": stack.atlassian, "jira": stack.jira}

    def total_calls(s) -> int | None:
        total = getattr(s, "calls_total", None)
        return s.calls if total is None and isinstance(getattr(s, "calls", None), int) else total

    def call_routes(s) -> dict[str, int]:
        counter = s.calls if not isinstance(getattr(s, "calls", None), int) else (
            getattr(s, "calls_by_path", None) or getattr(s, "calls_by_operation", {}))
        return {(f"{k[0]} {k[1]}" if isinstance(k, tuple) else str(k)): n for k, n in counter.items()}

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        return (await request.json()) if raw else {}

    async def latency(request: Request) -> JSONResponse:
        ms = float((await body(request))["ms"])
        for s in vendors().values():
            s.faults.latency_s = ms / 1000
        return JSONResponse({"latency_ms": ms})

    async def stats(request: Request) -> JSONResponse:
        calls = {name: total_calls(s) for name, s in vendors().items()}
        routes = {name: call_routes(s) for name, s in vendors().items() if hasattr(s, "calls")}
        return JSONResponse({"calls": calls, "routes": routes,
                             "meter": stack.meter.snapshot() if stack.meter else None})

    async def reset_meter(request: Request) -> JSONResponse:
        """A measurement starts: what the seeding left is put out of the collector's sight first (as the harness
        does with its start-up objects), so a full collection over it does not land in the middle of the measured
        calls as a pause no vendor has; the CPU it takes is spent here, before the meter starts."""
        gc.collect()
        gc.freeze()
        if stack.meter:
            stack.meter.reset()
        return JSONResponse({"ok": True})

    async def issues(request: Request) -> JSONResponse:
        """Issues per external-id prefix (``bc:purchaseInvoices:``, ``fo:``...) and duplicates."""
        prefixes = request.query_params.getlist("prefix")
        found = sc.issues_by_external_id(stack)
        return JSONResponse({"total": sum(len(v) for v in found.values()),
                             "by_prefix": {p: sum(1 for k in found if k and k.startswith(p)) for p in prefixes},
                             "duplicates": sum(len(v) - 1 for v in found.values() if len(v) > 1)})

    def call(fn):
        """POST /call/<name>: one named harness action, run in a worker thread (it may block on HTTP)."""
        async def endpoint(request: Request) -> JSONResponse:
            from starlette.concurrency import run_in_threadpool

            args = await body(request)
            return JSONResponse(await run_in_threadpool(fn, **args))
        return endpoint

    def bc_invoices(prefix: str, n: int, vendor_name: str = "Bench Vendor", status: str = "Draft",
                    drop_notifications: bool = False) -> dict[str, Any]:
        ids = [stack.bc.add_purchase_invoice(stack.company_id, number=f"PI-{prefix}{i:05d}", status=status,
                                             vendorName=vendor_name, vendorNumber="V90000",
                                             totalAmountIncludingTax=100.0 + i, currencyCode="USD")["id"]
               for i in range(n)]
        if drop_notifications:
            stack.bc.drop_pending_notifications()
        return {"ids": ids, "company_id": stack.company_id}

    def bc_deliver() -> dict[str, Any]:
        return {"delivered": stack.bc.deliver_notifications()}

    def fo_seed(prefix: str, n: int, area: str = "usmf") -> dict[str, Any]:
        fo = stack.fo
        fo.retry_delay_s = 0
        fo.add_vendor(area, VendorAccountNumber=f"{prefix}-V1", VendorOrganizationName="Bench Vendor",
                      CurrencyCode="USD")
        docs = []
        for i in range(n):
            kind = ("invoice", "confirmed", "rejected")[i % 3]
            if kind == "invoice":
                inv = fo.add_vendor_invoice(area, VendorAccount=f"{prefix}-V1", VendorName="Bench Vendor",
                                            InvoiceNumber=f"{prefix}-INV-{i:05d}", Currency="USD",
                                            lines=[{"Amount": 100.0 + i}])
                docs.append((kind, inv["HeaderReference"]))
            else:
                status = "Approved" if kind == "confirmed" else "InReview"
                po = fo.add_purchase_order(area, PurchaseOrderNumber=f"{prefix}-PO-{i:05d}", CurrencyCode="USD",
                                           OrderVendorAccountNumber=f"{prefix}-V1", DocumentApprovalStatus=status,
                                           lines=[{"LineAmount": 50.0 + i}])
                docs.append((kind, po["PurchaseOrderNumber"]))
        return {"docs": docs}

    def fo_fire(docs: list[list[str]], area: str = "usmf") -> dict[str, Any]:
        """People work in F&O: post the invoices, confirm / workflow-reject the POs (events queue up)."""
        fo = stack.fo
        for kind, number in docs:
            if kind == "invoice":
                fo.post_vendor_invoice(area, number)
            elif kind == "confirmed":
                fo.confirm_purchase_order(area, number)
            else:
                fo.reject_purchase_order_workflow(area, number)
        return {"fired": len(docs)}

    def fo_deliver() -> dict[str, Any]:
        return {"delivered": stack.fo.deliver_events()}

    def acu_bills(prefix: str, n: int, hours_ago: float = 0) -> dict[str, Any]:
        """``n`` held bills, last modified ``hours_ago`` hours ago by the sandbox's clock (a past window). Their
        push notifications stay queued until ``acu_deliver``."""
        acu = stack.acumatica
        acu.clock.advance(hours=-hours_ago)   # LastModifiedDateTime never goes back: seed older hours first
        try:
            acu.add_vendor(VendorID=f"{prefix}V", VendorName="Bench Vendor")
            bills = [acu.add_bill(vendor=f"{prefix}V", amount=100.0 + i, VendorRef=f"{prefix}-{i:05d}")
                     for i in range(n)]
        finally:
            acu.clock.advance(hours=hours_ago)
        return {"keys": [[b["Type"], b["ReferenceNbr"]] for b in bills],
                "first_modified": bills[0]["LastModifiedDateTime"], "last_modified": bills[-1]["LastModifiedDateTime"]}

    def acu_deliver() -> dict[str, Any]:
        return {"delivered": stack.acumatica.deliver_notifications()}

    def fo_invoices(prefix: str, n: int, area: str = "usmf") -> dict[str, Any]:
        """``n`` vendor invoices only (one vendor), not posted yet: ``docs`` for ``fo_fire`` and each invoice's
        ``keys`` (VendorAccount, InvoiceNumber: what its posted event names)."""
        fo = stack.fo
        fo.retry_delay_s = 0
        vendor = f"{prefix}-V1"
        fo.add_vendor(area, VendorAccountNumber=vendor, VendorOrganizationName="Bench Vendor", CurrencyCode="USD")
        invoices = [fo.add_vendor_invoice(area, VendorAccount=vendor, VendorName="Bench Vendor",
                                          InvoiceNumber=f"{prefix}-INV-{i:05d}", Currency="USD",
                                          lines=[{"Amount": 100.0 + i}])
                    for i in range(n)]
        return {"docs": [["invoice", inv["HeaderReference"]] for inv in invoices],
                "keys": [[inv["VendorAccount"], inv["InvoiceNumber"]] for inv in invoices]}

    def monday_items(prefix: str, column: str = "external_id") -> dict[str, Any]:
        """Active items on every Monday board whose ``column`` (the external id) starts with ``prefix``, and the
        duplicates among them (items beyond the first of one external id)."""
        by_key: dict[str, int] = {}
        for board_id in list(stack.monday.store.boards):
            for item in stack.monday.items(board_id):
                key = ((item["column_values"].get(column) or {}).get("text") or "")
                if key.startswith(prefix):
                    by_key[key] = by_key.get(key, 0) + 1
        return {"count": len(by_key), "items": sum(by_key.values()),
                "duplicates": sum(n - 1 for n in by_key.values() if n > 1)}

    def monday_stats() -> dict[str, Any]:
        """The Monday sandbox's counters (calls, complexity points charged, 429s served) and the personal token's
        budget window now: points used in the last 60 s, the budget, and seconds until the oldest charge leaves."""
        mon = stack.monday
        with mon._lock:
            now = mon.clock.timestamp()
            window = mon._budgets.get((stack.secrets["monday_token"], "all"))
            used = window.used(now) if window else 0
            reset_in = window.reset_in(now) if window else 0
            return {"calls": mon.calls, "calls_by_operation": dict(mon.calls_by_operation),
                    "complexity_used": mon.complexity_used, "served_429": mon.served_429,
                    "create_item": mon.mutation_calls("create_item"), "window_used": used,
                    "window_reset_in_s": reset_in, "budget_per_minute": mon.limits.complexity_per_minute}

    actions = {"bc_invoices": bc_invoices, "bc_deliver": bc_deliver, "fo_seed": fo_seed, "fo_fire": fo_fire,
               "fo_deliver": fo_deliver, "acu_bills": acu_bills, "acu_deliver": acu_deliver,
               "fo_invoices": fo_invoices, "monday_items": monday_items, "monday_stats": monday_stats}
    routes = [Route("/latency", latency, methods=["POST"]), Route("/stats", stats),
              Route("/meter/reset", reset_meter, methods=["POST"]), Route("/issues", issues),
              Route("/healthz", lambda request: JSONResponse({"status": "ok"}))]
    routes += [Route(f"/call/{name}", call(fn), methods=["POST"]) for name, fn in actions.items()]
    return Starlette(routes=routes)


class ControlClient:
    """The benchmark's side of the control channel."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=600)

    def _ok(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def call(self, action: str, **args: Any) -> Any:
        return self._ok(self.http.post(f"/call/{action}", json=args))

    def set_latency(self, ms: float) -> None:
        self._ok(self.http.post("/latency", json={"ms": ms}))

    def stats(self) -> dict[str, Any]:
        return self._ok(self.http.get("/stats"))

    def reset_meter(self) -> None:
        self._ok(self.http.post("/meter/reset"))

    def issues(self, *prefixes: str) -> dict[str, Any]:
        return self._ok(self.http.get("/issues", params=[("prefix", p) for p in prefixes]))

    def close(self) -> None:
        self.http.close()
