"""The server of test_health_under_fuzz: ``python -m backend``'s gunicorn (one worker, gthread) with
the test fakes in a real model process (as ``bench/bench_service_load.py --serve --methods fake``),
and no network but 127.0.0.1: name lookups of anything else and connections anywhere else are
refused inside the server (patched before gunicorn forks its worker), and each refusal is logged
to ``$MODEL_DIR/refused.log`` so the test can report them.

Usage (the test starts it): ``python -m tests.reliability._fuzz_server`` with the service's
environment (HOST, PORT, MODEL_DIR, ...).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", None)


def refuse_the_network(log_path: Path) -> None:
    lock = threading.Lock()
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def note(what: str) -> None:
        with lock, open(log_path, "a") as handle:
            handle.write(what + "\n")

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            note(f"name lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "no network in reliability tests")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            note(f"connect to {address!r}")
            raise ConnectionRefusedError("no network in reliability tests")
        return real_connect(sock, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect


def main() -> None:
    from backend.service.config import ServiceConfig
    from backend.service.server import LOG_FORMAT, GunicornServer, import_libraries

    config = ServiceConfig.from_env()
    refuse_the_network(Path(os.environ["MODEL_DIR"]) / "refused.log")
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    import_libraries(config)

    class FakeMethodsServer(GunicornServer):
        def load(self):
            from backend.service.app import create_app
            from backend.service.model_process import ProcessModelRuntime
            from tests.service.process_fakes import quick_library

            runtime = ProcessModelRuntime(self.service_config, quick_library)
            return create_app(self.service_config, runtime=runtime)

    FakeMethodsServer(config).run()


if __name__ == "__main__":
    main()
