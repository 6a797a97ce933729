"""A static HTTP server with Range requests (what object stores answer), for remote-scene tests.

It runs in its own process: GDAL holds the GIL while it opens a /vsicurl/ file, so a server
thread in the test process would stall until curl times out. Python's own handler ignores
`Range`, which GDAL needs, hence this subclass. Run: `python tests/_http.py DIR`; it prints
its port on the first line of stdout.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files whole or by byte range (206); counts requests per path in a log file."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # noqa: ANN201 - the base class's contract: a file object or None
        path = self.translate_path(self.path.split("?", 1)[0])
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, size - 1
        if m:
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            return io.BytesIO(f.read(end - start + 1))


@contextlib.contextmanager
def serve(folder: str | Path) -> Iterator[str]:
    """Serve `folder` from 127.0.0.1 in a child process; yields the base URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    handler = functools.partial(RangeHandler, directory=sys.argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
