"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3,
replies on fd 4, NUL-separated JSON), so no websocket library is needed.

``find_or_install()`` returns the browser path, installing the Debian package ``chromium`` with apt when it is missing
and we are root; ``open_page(path, screenshot)`` loads a local file and returns what it saw: the state of every
<img>, console messages, uncaught exceptions, log entries (failed loads, CSP violations) and the screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

STDERR = subprocess.DEVNULL
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_or_install() -> tuple[str | None, str]:
    """(path, reason): the browser, or None and why it is not available."""
    path = find()
    if path:
        return path, ""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "Chromium is not installed and cannot be installed here (apt-get as root is needed)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=True, capture_output=True,
                       timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"installing Chromium with apt-get failed: {exc} {detail.decode(errors='replace')[-300:]}"
    path = find()
    return (path, "") if path else (None, "apt-get installed chromium but no browser binary was found")


class _Pipe:
    def __init__(self, proc, write_fd, read_fd):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method, params=None, session=None, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method, timeout=30.0):
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self, deadline) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)


def open_page(browser: str, page: Path, screenshot: Path | None = None, width: int = 1400,
              timeout: float = 60.0) -> dict:
    """Load ``page`` (a local HTML file) and report ``images`` [(complete, naturalWidth)], ``console`` (messages of
    type error/warning/assert), ``exceptions``, ``log`` (log entries of level error), ``body`` attributes and the
    page height; save a full-page PNG screenshot to ``screenshot`` when given."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="cnnviz-chromium-")

    def child_fds():  # runs in the child before exec: put the two pipe ends at fds 3 and 4, inheritable
        import fcntl

        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=STDERR,
                            close_fds=False, preexec_fn=child_fds)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(proc, to_browser_w, from_browser_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        state = pipe.send("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]),
            marker: document.body.getAttribute('data-images'),
            height: document.documentElement.scrollHeight,
            title: document.title})"""}, session=session)["result"]["value"]
        state = json.loads(state)
        if screenshot is not None:
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": min(int(state["height"]), 16000), "deviceScaleFactor": 1,
                       "mobile": False}, session=session)
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush pending events
        console = [e["params"] for e in pipe.events if e.get("method") == "Runtime.consoleAPICalled"
                   and e["params"].get("type") in ("error", "warning", "assert")]
        exceptions = [e["params"] for e in pipe.events if e.get("method") == "Runtime.exceptionThrown"]
        log = [e["params"]["entry"] for e in pipe.events if e.get("method") == "Log.entryAdded"
               and e["params"]["entry"].get("level") == "error"]
        try:
            pipe.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError):
            pass
        return {**state, "console": console, "exceptions": exceptions, "log": log}
    finally:
        os.close(to_browser_w)
        os.close(from_browser_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
