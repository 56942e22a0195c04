"""Two blocking downloads, offloaded: they overlap, and the event loop keeps running.

Run it: ``python examples/parallel_downloads.py``. It serves a slow page on 127.0.0.1 and
fetches it twice with the blocking ``urllib`` client, as legacy code would.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
import urllib.request

import offload


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(1.0)  # a slow upstream
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@offload.thread(timeout=10)
def download(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()  # type: ignore[no-any-return]


async def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        start = time.perf_counter()
        pages = await asyncio.gather(download(url), download(url))
        print(f"{len(pages)} pages in {time.perf_counter() - start:.2f} s (each takes 1 s)")
        print(offload.thread.stats())
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    asyncio.run(main())
