"""An HTTP server on this machine that serves in a background thread or in the caller's (`medattack serve`'s chat
endpoint, `medattack label`'s page)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class BackgroundServer:
    """Holds `httpd`; `start()` serves in a daemon thread named `thread_name`, `serve_forever()` in this one."""

    httpd: ThreadingHTTPServer
    thread_name = "medattack-server"

    def start(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, name=self.thread_name, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
