"""The harness's in-flight meter: the concurrency a benchmark's latency floor divides by."""

import asyncio

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandboxes.harness.control import InFlightMeter


def slow_app(delay_s: float) -> Starlette:
    async def answer(request):
        await asyncio.sleep(delay_s)
        return JSONResponse({"ok": True})
    return Starlette(routes=[Route("/", answer)])


async def call(app, n: int) -> None:
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await asyncio.gather(*(client.get("/") for _ in range(n)))


def test_meter_counts_requests_and_the_concurrency_they_came_with():
    meter = InFlightMeter()
    app = meter.wrap(slow_app(0.05), "jira")
    asyncio.run(call(app, 4))            # four at once
    snap = meter.snapshot()
    assert snap["requests"] == 4 and snap["by_vendor"] == {"jira": 4}
    assert snap["max_in_flight"] == 4
    assert 3.0 <= snap["mean_in_flight"] <= 4.0
    assert snap["request_s"] >= 4 * 0.05

    meter.reset()
    for _ in range(3):                   # one after another
        asyncio.run(call(app, 1))
    snap = meter.snapshot()
    assert snap["requests"] == 3 and snap["max_in_flight"] == 1
    assert snap["mean_in_flight"] == 1.0


def test_meter_reports_the_cpu_its_process_spent_since_reset():
    meter = InFlightMeter()
    assert 0 <= meter.snapshot()["cpu_s"] < 0.5
    sum(i * i for i in range(2_000_000))   # some CPU in this process
    assert meter.snapshot()["cpu_s"] > 0.01
    meter.reset()
    assert meter.snapshot()["cpu_s"] < 0.05
