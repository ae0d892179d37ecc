"""A headless Chromium driven over the DevTools protocol: a Streamlit page is an empty shell until its script
has run and the browser has drawn the result over a websocket, so `--dump-dom` alone sees nothing; this waits
until the page has really rendered, then reads what a person would see."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp

from tests.conftest import free_port


class Chromium:
    def __init__(self, binary: str, profile: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def render(self, url: str, ready: tuple[str, ...], timeout: float = 60.0) -> dict:
        """Open `url`; once the page's text contains every one of `ready` and Streamlit is no longer running the
        script, return {"text": the visible text, "exceptions": Streamlit exception boxes, "title": ...}. (One
        text drawn last is not enough: Streamlit sends a run's elements as they come, not in page order.)"""
        return asyncio.run(self._render(url, ready, timeout))

    async def _render(self, url: str, ready: tuple[str, ...], timeout: float) -> dict:
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:  # the browser's DevTools endpoint comes up a moment after the process
                try:
                    async with http.put(f"{base}/json/new?{url}") as r:
                        target = json.loads(await r.text())
                    break
                except (aiohttp.ClientError, json.JSONDecodeError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            probe = ("JSON.stringify({text: document.body ? document.body.innerText : '', "
                     "exceptions: document.querySelectorAll('[data-testid=stException]').length, "
                     "running: !!document.querySelector('[data-testid=stStatusWidget]'), title: document.title})")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                seen: dict = {}
                for n in range(1, 100_000):
                    if all(r in seen.get("text", "") for r in ready) and not seen.get("running"):
                        await asyncio.sleep(0.5)  # the last elements of the run, then one more look
                        return await _evaluate(ws, n, probe)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url} did not render {ready!r} in {timeout:g} s: {seen}")
                    await asyncio.sleep(0.25)
                    seen = await _evaluate(ws, n, probe)
        raise AssertionError("unreachable: the loop returns or times out")


async def _evaluate(ws, n: int, expression: str) -> dict:
    await ws.send_json({"id": n, "method": "Runtime.evaluate",
                        "params": {"expression": expression, "returnByValue": True}})
    while (msg := await ws.receive_json()).get("id") != n:
        pass
    return json.loads(msg["result"]["result"].get("value") or "{}")
