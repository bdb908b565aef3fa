"""Driving the real ComfyUI frontend (the one a server serves) in headless Chromium, for test_comfy_frontend.py.

Everything goes through the page's own objects: ``window.app`` (the ComfyApp: ``loadGraphData``, ``graphToPrompt``,
``queuePrompt``) and the LiteGraph nodes of ``app.graph`` (``getBounding()``, ``widgets``). Dialogs are read from
the DOM (PrimeVue ``.p-dialog`` elements), the way a person sees them.
"""
from __future__ import annotations

import json
import time

#: settings written for the test user before the page opens: no first-run template browser
USER_SETTINGS = {"Comfy.TutorialCompleted": True}

JS_BOXES = """() => window.app.graph._nodes.map(n => {
    const b = n.getBounding();
    return {id: n.id, type: n.type, title: n.title, x: b[0], y: b[1], w: b[2], h: b[3]};
})"""

JS_DIALOGS = """() => [...document.querySelectorAll('.p-dialog')]
    .filter(d => d.offsetParent !== null || getComputedStyle(d).display !== 'none')
    .map(d => d.innerText.trim().slice(0, 600))"""


def write_user_settings(base) -> None:
    d = base / "user" / "default"
    d.mkdir(parents=True, exist_ok=True)
    (d / "comfy.settings.json").write_text(json.dumps(USER_SETTINGS))


def open_app(browser, url: str, timeout_ms: int = 90000):
    """A fresh context + page on ``url`` with the app booted (extensions loaded, graph ready)."""
    ctx = browser.new_context(viewport={"width": 1800, "height": 1100})
    page = ctx.new_page()
    page.console_errors = []
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(url, wait_until="load", timeout=timeout_ms)
    page.wait_for_function("() => window.app && window.app.graph && window.app.vueAppReady !== false "
                           "&& document.querySelector('canvas')", timeout=timeout_ms)
    page.wait_for_timeout(1500)
    close_dialogs(page)
    return ctx, page


def close_dialogs(page) -> None:
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)


def load_workflow(page, wf: dict) -> list[str]:
    """``app.loadGraphData(wf)``; returns the texts of the dialogs it opened (missing nodes / models ...)."""
    close_dialogs(page)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", wf)
    page.wait_for_timeout(1500)  # the missing-models check is asynchronous (model folder listings)
    return page.evaluate(JS_DIALOGS)


def boxes(page) -> list[dict]:
    return page.evaluate(JS_BOXES)


def overlaps(bxs: list[dict], margin: float = 0.0) -> list[tuple[str, str]]:
    """Pairs of nodes whose bounding boxes (title bar included) intersect."""
    out = []
    for i, a in enumerate(bxs):
        for b in bxs[i + 1:]:
            if (a["x"] < b["x"] + b["w"] - margin and b["x"] < a["x"] + a["w"] - margin
                    and a["y"] < b["y"] + b["h"] - margin and b["y"] < a["y"] + a["h"] - margin):
                out.append((f"{a['id']}:{a['type']}", f"{b['id']}:{b['type']}"))
    return out


def graph_to_prompt(page) -> dict:
    """The API prompt the frontend would submit for the loaded graph (``app.graphToPrompt().output``)."""
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def set_widgets(page, values: dict) -> None:
    """``{node_id: {widget_name: value}}`` on the loaded graph, like a person editing the widgets."""
    page.evaluate("""(values) => {
        for (const [id, ws] of Object.entries(values)) {
            const n = window.app.graph.getNodeById(Number(id));
            for (const [name, v] of Object.entries(ws)) {
                const w = n.widgets.find(w => w.name === name);
                if (!w) throw new Error(`node ${id} has no widget ${name}`);
                w.value = v; w.callback?.(v);
            }
        }
    }""", values)


def queue_and_wait(page, server, timeout: float = 600.0) -> dict:
    """Press Run (``app.queuePrompt(0)``) and wait for the prompt in the server's history; its entry."""
    before = set(server.get("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0); }")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        new = set(server.get("/history")) - before
        if new:
            return server.wait(new.pop(), timeout=timeout)
        time.sleep(0.3)
    raise TimeoutError("the frontend's Run did not reach the server's history")
