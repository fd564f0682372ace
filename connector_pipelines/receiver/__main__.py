"""python -m connector_pipelines.receiver --host 127.0.0.1 --port 8090"""

import argparse
import logging

import uvicorn

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.app import ReceiverSettings, create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m connector_pipelines.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(Inbox(get_engine()), ReceiverSettings.from_env())
    uvicorn.run(app, host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
