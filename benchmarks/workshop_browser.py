"""A learner's view of the workshop in headless Chromium (Debian's ``chromium``), driven over the
DevTools protocol with ``websocket-client`` (installed with Jupyter): log in to the hub, open the
Assignments panel (Nbgrader menu, Assignment List), wait for what must be there, take a
screenshot. Used by ``benchmarks/workshop.py``."""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import websocket


class Browser:
    """One headless Chromium with one page; ``close()`` ends it."""

    def __init__(self, size=(1400, 900)):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise RuntimeError("chromium not found (apt-get install chromium)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="workshop-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                    page = next(p for p in pages if p.get("type") == "page")
                    break
                except (requests.RequestException, StopIteration):
                    if time.time() > deadline or self.proc.poll() is not None:
                        raise RuntimeError("chromium did not open its DevTools port within 30 s") from None
                    time.sleep(0.5)
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
            self.send("Page.enable")
        except BaseException:
            self.close()
            raise

    def send(self, method: str, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between: skip them
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"javascript failed: {res['exceptionDetails'].get('text')}: {expression[:80]}")
        return res["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 90):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is navigating
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{what}: not there after {timeout:.0f} s")

    def click_text(self, selector: str, text: str, what: str):
        """A real mouse click (press, release) in the middle of the element matching ``selector``
        whose text is ``text``: Lumino's menus react to real pointer events."""
        rect = self.wait(f"""(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]
            .find(e => e.innerText.trim() === {json.dumps(text)}); if (!e) return null;
            const r = e.getBoundingClientRect(); return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()""",
                         what)
        x, y = rect
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def learner_view(hub_url: str, user: str, password: str, assignment: str, png: Path) -> dict:
    """Log ``user`` in, open their Assignments panel, wait until it lists ``assignment`` as
    downloaded and as submitted with its feedback, save a screenshot to ``png``; what they saw."""
    b = Browser()
    try:
        b.send("Page.navigate", url=f"{hub_url}/hub/login?next=/user/{user}/lab")
        b.wait("!!document.querySelector('#username_input')", "the hub's login form")
        b.js(f"""document.querySelector('#username_input').value = {json.dumps(user)};
                 document.querySelector('#password_input').value = {json.dumps(password)};
                 document.querySelector('#login_submit').click(); true""")
        b.wait("!!document.querySelector('.lm-MenuBar-item') && location.pathname.includes('/lab')",
               "JupyterLab after logging in", timeout=180)
        # the Lab is usable once its splash screen is gone; a click while it restores its layout
        # can open a menu that closes again: retry
        b.wait("!document.querySelector('#jupyterlab-splash')", "JupyterLab's splash screen to go", timeout=180)
        time.sleep(2.0)
        for attempt in range(3):
            b.click_text(".lm-MenuBar-itemLabel", "Nbgrader", "the Nbgrader menu")
            try:
                menu = b.wait("(() => { const m = [...document.querySelectorAll('.lm-Menu-itemLabel')]"
                              ".map(e => e.innerText.trim()).filter(Boolean); return m.length ? m : null; })()",
                              "the Nbgrader menu's items", timeout=15)
                break
            except TimeoutError:
                if attempt == 2:
                    raise
                b.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", windowsVirtualKeyCode=27)
                time.sleep(2.0)
        b.click_text(".lm-Menu-itemLabel", "Assignment List", "Assignment List in the Nbgrader menu")
        # the panel: "Downloaded assignments" lists the fetched notebook, "Submitted assignments"
        # the submission with a "(view feedback)" link once the feedback is fetched
        got = b.wait(f"""(() => {{ const [d, s] = ['#fetched_assignments_list', '#submitted_assignments_list']
            .map(q => document.querySelector(q)?.innerText || ''); const a = {json.dumps(assignment)};
            return d.includes(a) && s.includes(a) && s.includes('view feedback') ? [d, s] : null; }})()""",
                     f"{assignment} under Downloaded assignments and with '(view feedback)' under Submitted")
        time.sleep(1.0)  # let the panel finish drawing
        b.screenshot(png)
        released = b.js("document.querySelector('#released_assignments_list')?.innerText || ''")
        return {"menu": menu, "released": " ".join(released.split()), "downloaded": " ".join(got[0].split()),
                "submitted": " ".join(got[1].split()), "screenshot": str(png)}
    except Exception:
        try:  # what the learner saw instead
            b.screenshot(png.with_name(png.stem + "-failed.png"))
        except Exception:  # noqa: BLE001  (the page may be gone: the first error is the one to see)
            pass
        raise
    finally:
        b.close()
