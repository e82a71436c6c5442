"""A headless chromium driven through the Chrome DevTools Protocol, over one websocket.

    with Chromium(binary, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page(1280, 900)
        page.navigate(url)
        page.evaluate("document.title")

Only what the demo test needs: pages (flattened target sessions), script evaluation, file
inputs, mouse clicks, screenshots, and the events seen so far (console messages, exceptions,
requests), kept for assertions and for failure messages. Every wait is a condition with a
deadline (``tessera.testing.waiting``).
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tessera.testing.serve import stop_process
from tessera.testing.waiting import wait_until

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--no-default-browser-check",
)
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0


class CDPError(RuntimeError):
    """A DevTools command answered with an error, or a page script threw."""


class Chromium:
    """One chromium process with its own profile folder, and a DevTools connection to it."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        self.binary, self.profile, self.log = binary, profile, log
        self.process: subprocess.Popen | None = None
        self.socket = None
        self.events: list[dict] = []
        self._ids = itertools.count(1)

    def start(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        port_file = self.profile / "DevToolsActivePort"  # chromium writes its port and path here

        def endpoint() -> str | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            lines = port_file.read_text().split() if port_file.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 else None

        url = wait_until(endpoint, START_TIMEOUT_S, what=f"chromium's DevTools endpoint (log: {self.log})")
        self.socket = connect(url, max_size=None, open_timeout=START_TIMEOUT_S)
        return self

    def send(self, method: str, session: str | None = None, timeout_s: float = CALL_TIMEOUT_S, **params: Any) -> dict:
        """Run one DevTools command and return its result (events that arrive meanwhile are kept)."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout_s:g} s")
            reply = json.loads(self.socket.recv(timeout=left))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Network", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return page

    def stop(self) -> None:
        if self.socket is not None:
            try:
                self.send("Browser.close", timeout_s=10)
            except Exception:  # already gone: the process is stopped below either way
                pass
            self.socket.close()
        if self.process is not None:
            stop_process(self.process, timeout_s=10)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Page:
    """One tab, through its flattened DevTools session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    def send(self, method: str, **params: Any) -> dict:
        return self.browser.send(method, session=self.session, **params)

    def events(self, method: str) -> list[dict]:
        """The params of every event ``method`` of this page seen so far."""
        return [e["params"] for e in self.browser.events if e["method"] == method and e.get("sessionId") == self.session]

    def console(self) -> list[str]:
        """Console messages, uncaught exceptions and browser log entries, one line each."""
        self.evaluate("0")  # let pending events arrive
        lines = [f"console.{e['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in e["args"])
                 for e in self.events("Runtime.consoleAPICalled")]
        lines += [f"exception: {e['exceptionDetails'].get('exception', {}).get('description') or e['exceptionDetails']['text']}"
                  for e in self.events("Runtime.exceptionThrown")]
        lines += [f"log.{e['entry']['level']}: {e['entry']['text']} {e['entry'].get('url', '')}" for e in self.events("Log.entryAdded")]
        return lines

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        wait_until(lambda: self.evaluate("document.readyState") == "complete", what=f"{url} loaded")

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (promises awaited); ``CDPError`` if it throws."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details['text']}")
        return result["result"].get("value")

    def set_files(self, selector: str, *files: Path) -> None:
        """Choose ``files`` in the file input ``selector``, as a user does (input and change events fire)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])

    def center_of(self, selector: str, fx: float = 0.5, fy: float = 0.5) -> tuple[float, float]:
        """Viewport coordinates of the point at fractions ``fx``, ``fy`` of the element's box."""
        box = self.evaluate(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.scrollIntoView();"
                            f" const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()")
        return box[0] + fx * box[2], box[1] + fy * box[3]

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type_text(self, selector: str, text: str) -> None:
        """Focus ``selector``, type ``text`` and press Enter."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
