"""Drive one headless Chromium tab over the DevTools protocol, with aiohttp's websocket client.

No browser-automation library is needed: Chromium is started with `--remote-debugging-port=0`,
the port it picked is read from `DevToolsActivePort` in its profile folder, and protocol commands
(`Page.navigate`, `DOM.setFileInputFiles`, `Input.dispatchDragEvent`, `Page.captureScreenshot`,
...) go over the tab's websocket. Page errors, console errors and every URL the page requested are
recorded, so a test can assert the page loads nothing from elsewhere and throws nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp


class DevToolsError(RuntimeError):
    pass


class DevToolsPage:
    """`async with DevToolsPage(browser) as page:` one tab of a private headless Chromium."""

    def __init__(self, browser: str, *, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.browser = browser
        self.width, self.height = width, height
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="cosa-devtools-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []  # every URL the page asked for
        self.problems: list[str] = []  # uncaught exceptions, console errors, CSP and other browser errors
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> DevToolsPage:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _start(self) -> None:
        command = [
            self.browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
            "--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None:
                raise DevToolsError(f"{self.browser} exited with {self.process.returncode} before DevTools was up")
            if time.monotonic() > deadline:
                raise DevToolsError(f"{self.browser} opened no DevTools port within {self.timeout:.0f} s")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as reply:
            targets = await reply.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
            await self.send(f"{domain}.enable")
        # the viewport exactly as asked (a headless window is at least 500 pixels wide)
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def _read(self) -> None:
        assert self.socket is not None
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self._note(data)
            self.events.put_nowait(data)

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.problems.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.problems.append("console.error: " + " ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.problems.append(f"{entry['source']}: {entry['text']} ({entry.get('url', '')})")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One protocol command; its result, or DevToolsError with the browser's message."""
        assert self.socket is not None
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        await self.socket.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, self.timeout)
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` in the page (promises are awaited); DevToolsError if it throws."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True, userGesture=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll until `expression` is truthy in the page; its value, or TimeoutError saying what was awaited."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout or self.timeout:.0f} s for {expression!r}")
            await asyncio.sleep(0.05)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        while not self.events.empty():
            self.events.get_nowait()
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while True:
            event = await asyncio.wait_for(self.events.get(), max(0.1, deadline - time.monotonic()))
            if event.get("method") == "Page.loadEventFired":
                return

    async def node(self, selector: str) -> int:
        document = await self.send("DOM.getDocument", depth=0)
        found = await self.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector=selector)
        if not found.get("nodeId"):
            raise DevToolsError(f"no element matches {selector!r}")
        return int(found["nodeId"])

    async def choose_files(self, selector: str, *paths: Path) -> None:
        """What a person does in the file picker: the input's files are set and its change event fires."""
        node = await self.node(selector)
        await self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    async def drop_files(self, selector: str, *paths: Path) -> None:
        """Drag files from outside the browser and drop them on the middle of `selector`."""
        x, y = await self.center(selector)
        data = {"items": [], "files": [str(Path(p).resolve()) for p in paths], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            await self.send("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)

    async def center(self, selector: str) -> tuple[float, float]:
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        return float(box[0]), float(box[1])

    async def click(self, selector: str) -> None:
        """A left click in the middle of `selector` (scrolled into view first)."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        x, y = await self.center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def download(self, selector: str, folder: Path, timeout: float = 20.0) -> Path:
        """Click the link `selector` and return the file the browser saved into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        before = set(folder.iterdir())
        await self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder.resolve()))
        await self.click(selector)
        deadline = time.monotonic() + timeout
        last_size = -1
        while time.monotonic() < deadline:
            new = set(folder.iterdir()) - before
            done = [p for p in new if not p.name.endswith(".crdownload")]
            # Chromium creates the final name as an empty placeholder before the data lands: wait until the
            # partial file is gone and the file's size is non-zero and unchanged over one poll.
            if done and not any(p.name.endswith(".crdownload") for p in new):
                size = done[0].stat().st_size
                if size > 0 and size == last_size:
                    return done[0]
                last_size = size
            await asyncio.sleep(0.05)
        raise TimeoutError(f"clicking {selector!r} downloaded nothing into {folder} within {timeout:.0f} s")

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": self.width, "height": max(size["height"], 1), "scale": 1},
            )
        shot = await self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.send("Browser.close")
            await self.socket.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.session is not None:
            await self.session.close()
        if self.process is not None:  # only the browser this object started, through its own handle
            for stop in (None, self.process.terminate, self.process.kill):
                if stop is not None:
                    stop()
                try:
                    self.process.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.profile, ignore_errors=True)
