"""Open a page in headless Chromium and report what happened, over the DevTools protocol on a pipe.

No Python browser package is needed: Chromium's `--remote-debugging-pipe` reads commands from fd 3 and
writes replies to fd 4 (JSON messages ended by NUL); a shell wrapper maps them to our stdin/stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt})),
  scripts: document.scripts.length,
  handlers: document.querySelectorAll('[onerror],[onload],[onclick],[onmouseover]').length,
  xss: window.__xss === undefined ? null : window.__xss,
  text: document.body.innerText,
  title: document.title,
  first_section: (document.querySelector('h2') || {}).innerText || null,
  first_table: (() => { const t = document.querySelector('table'); if (!t) return null;
                        const r = t.getBoundingClientRect();
                        return {top: r.top, bottom: r.bottom, right: r.right}; })(),
  viewport: {width: window.innerWidth, height: window.innerHeight},
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  rows: document.querySelectorAll('[data-id]').length,
  visible_rows: Array.from(document.querySelectorAll('[data-id]')).filter(r => !r.hidden).map(r => r.dataset.id),
  shown: (document.getElementById('shown') || {}).textContent || null,
})"""


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class _Pipe:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.process.stdin.write(json.dumps(message).encode() + b"\0")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == event for e in self.events):
            return
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return


class Page:
    """One tab of a headless Chromium: navigate, press keys, evaluate script, wait for a condition."""

    def __init__(self, pipe: _Pipe, session: str) -> None:
        self.pipe, self.session = pipe, session

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        return self.pipe.call(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 60.0) -> None:
        self.pipe.events = [e for e in self.pipe.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.pipe.wait_for("Page.loadEventFired", timeout)

    def reload(self, timeout: float = 60.0) -> None:
        self.pipe.events = [e for e in self.pipe.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.reload")
        self.pipe.wait_for("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        return result["result"].get("value")

    def press(self, key: str) -> None:
        """A key typed by the user: keydown (with its text) and keyup."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "text": key if kind == "keyDown" else "",
                                                 "code": f"Key{key.upper()}" if key.isalpha() else f"Digit{key}"})

    def wait_until(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"never true: {expression}")


@contextlib.contextmanager
def browser(timeout: float = 60.0):
    """A headless Chromium with one blank tab (`Page`), ended with its whole process group."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        wrapper = ["sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "chromium", *command]
        process = subprocess.Popen(wrapper, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            pipe = _Pipe(process)
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                pipe.call(domain, session=session)
            yield Page(pipe, session)
            with contextlib.suppress(RuntimeError, TimeoutError):
                pipe.call("Browser.close", timeout=5)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def render(page: Path, timeout: float = 60.0, fragment: str = "", screenshot: Path | None = None,
           ) -> dict[str, Any]:
    """Load `page` (with `#fragment`) on a 1400 x 900 screen and return the probe's findings (images, script
    traces, text, the first section's title and the first table's place on the screen, links, rows shown)
    plus `errors` (exceptions, console and log errors, a script refused by the page's policy); `screenshot`
    saves the first screen as PNG."""
    with browser(timeout) as tab:
        tab.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1,
                                                        "mobile": False})  # a laptop screen
        tab.goto(page.resolve().as_uri() + (f"#{fragment}" if fragment else ""), timeout)
        if screenshot is not None:
            import base64

            shot = tab.call("Page.captureScreenshot", {"format": "png"})["data"]
            screenshot.write_bytes(base64.b64decode(shot))
        found = json.loads(tab.evaluate(PROBE))
        found["errors"] = page_errors(tab)
        return found


def page_errors(tab: Page) -> list[str]:
    """Exceptions, console errors and log errors (a script refused by the page's policy) the tab saw so far."""
    errors = []
    for event in tab.pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors
