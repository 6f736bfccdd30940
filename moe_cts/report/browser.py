"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no
websocket library, no network, no driver binary. Enough to open the single-file report, read its text,
click a test and take screenshots.

    with Browser() as b:
        b.open("file:///.../index.html")
        b.wait_text("Total", timeout_s=30)
        png = b.screenshot()
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

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    def __init__(self, exe: str | None = None, width: int = 1400, height: int = 1000):
        self.exe = exe or find_chromium()
        if self.exe is None:
            raise BrowserError("no chromium on PATH (apt-get install -y chromium)")
        self.width, self.height = width, height
        self.proc = None
        self._id = 0
        self._buf = b""
        self.session = None
        self.events: list[dict] = []

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="moe-cts-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands, chromium reads fd 3
        res_r, res_w = os.pipe()  # chromium writes results on fd 4

        def child():
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([self.exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     preexec_fn=child, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(cmd_r)
        os.close(res_w)
        self._w, self._r = cmd_w, res_r
        tid = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=tid, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc):
        try:
            if self.proc and self.proc.poll() is None:
                try:
                    self.call("Browser.close", _session=False, _timeout=5)
                except Exception:  # noqa: BLE001
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            for fd in (getattr(self, "_w", None), getattr(self, "_r", None)):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            shutil.rmtree(self.profile, ignore_errors=True)

    # -------------------------------------------------------------------------------- protocol
    def call(self, method: str, _session: bool = True, _timeout: float = 30.0, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if _session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + _timeout
        while True:
            m = self._read(end - time.monotonic())
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error'].get('message')}")
                return m.get("result", {})
            self.events.append(m)

    def _read(self, timeout: float) -> dict:
        while b"\0" not in self._buf:
            if timeout <= 0:
                raise BrowserError("chromium did not answer in time")
            t0 = time.monotonic()
            ready, _, _ = select.select([self._r], [], [], timeout)
            timeout -= time.monotonic() - t0
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    # -------------------------------------------------------------------------------- page helpers
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"script failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def wait_text(self, *needles: str, timeout_s: float = 30.0) -> str:
        end = time.monotonic() + timeout_s
        t = ""
        while time.monotonic() < end:
            t = self.text()
            if all(n in t for n in needles):
                return t
            time.sleep(0.25)
        missing = [n for n in needles if n not in t]
        raise BrowserError(f"page never showed {missing!r}; it shows: {t[:300]!r}")

    def click_text(self, selector: str, needle: str) -> bool:
        js = (f"(() => {{ for (const e of document.querySelectorAll({json.dumps(selector)})) "
              f"{{ if (e.innerText.includes({json.dumps(needle)})) {{ e.scrollIntoView(); e.click(); return true; }} }} "
              f"return false; }})()")
        return bool(self.eval(js))

    def screenshot(self, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
