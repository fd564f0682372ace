"""`make sandbox`: every sandbox (and the receiver) on loopback; prints a JSON map of base URLs and
credentials, then the same environment as `export` lines to paste into a shell (after which
`connector-pipelines jira consent` and `connector-pipelines ping` work against the sandboxes), then
serves until Ctrl-C. The credentials are the sandbox's own throwaway values.

For a driver in another process (the benchmarks): ``--control`` also serves the admin channel of
``sandboxes.harness.control`` on its own loopback port (its URL under "control" in the map) and meters the
vendor sandboxes' in-flight requests; ``--consent`` runs the Jira consent flow before printing (the vault
holds the token); ``--no-auto-delivery`` leaves deliveries to the driver."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import threading
from pathlib import Path

from connector_pipelines.systems.atlassian.oauth import DEFAULT_CONSENT_PORT
from sandboxes.common import SandboxServer
from sandboxes.harness.control import control_app
from sandboxes.harness.stack import consent, export_lines, start_stack


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.harness")
    parser.add_argument("--workdir", default=".demo/sandbox")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every sandbox call")
    parser.add_argument("--no-receiver", action="store_true")
    parser.add_argument("--consent-port", type=int, default=DEFAULT_CONSENT_PORT,
                        help="the port `connector-pipelines jira consent --port` will listen on")
    parser.add_argument("--control", action="store_true", help="serve the admin control channel (benchmarks)")
    parser.add_argument("--consent", action="store_true", help="run the Jira consent flow before printing")
    parser.add_argument("--no-auto-delivery", action="store_true", help="deliver only when told (--control)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("CONNECTOR_DATABASE_URL") or f"sqlite:///{workdir / 'connector_pipelines.sqlite'}"
    stack = start_stack(workdir, receiver=not args.no_receiver, latency_s=args.latency_ms / 1000,
                        database_url=database_url, consent_port=args.consent_port, metered=args.control)
    world = stack.describe()
    if args.consent:
        consent(stack)
    if args.control:
        control = SandboxServer(control_app(stack)).start()
        stack.servers["control"] = control
        world["control"] = {"url": control.base_url}
    # Everything built so far lives as long as the process: the vendors' specs and the validators compiled from
    # them, the GraphQL schema, the servers. Out of the collector's sight (gc.freeze), a full collection walks only
    # the records the sandboxes hold, not ~1M spec objects: it cost ~0.35 s of CPU (a vendor call's answer held up
    # that long) each time it ran.
    gc.collect()
    gc.freeze()
    if not args.no_auto_delivery:
        stack.bc.start_auto_delivery(2.0)
        stack.jira.start_auto_delivery(1.0)
        if stack.fo is not None:
            stack.fo.start_auto_delivery(1.0)
    print(json.dumps(world, indent=2), flush=True)
    port = "" if args.consent_port == DEFAULT_CONSENT_PORT else f" --port {args.consent_port}"
    print("\n# Point the product at the sandboxes (paste into your shell), then run:\n"
          f"#   .venv/bin/connector-pipelines jira consent{port}   (open the printed URL; the sandbox consents)\n"
          "#   .venv/bin/connector-pipelines ping\n" + "\n".join(export_lines(stack.env)), flush=True)
    print("# end of environment", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    stack.stop()


if __name__ == "__main__":
    main()
