"""An ASGI app served by uvicorn in a thread on a free loopback port, for the server tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def serving(app, start_timeout_s: float = 120.0) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 while the block runs; yields the port. Stops uvicorn
    (not the app's worker: the caller owns it) when the block ends."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                       lifespan="off"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.025)
    assert uv.started, "uvicorn did not start"
    try:
        yield port
    finally:
        uv.should_exit = True
        thread.join(30)
