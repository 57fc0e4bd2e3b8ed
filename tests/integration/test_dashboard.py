"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

The browser talks to a running instance: it must render every server, a click on Drain must
change the server's state through the API, and the chart must move under real traffic.
A screenshot is kept in tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_admin_support import admin_url, close_servers, running, start_named_servers, wait_for

CHROMIUM = os.environ.get("STEELYARD_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
)
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or `make browsers`)",
        allow_module_level=True,
    )

CONFIG = """\
version: 1
admin:
  bind: 127.0.0.1:0
{token}
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /}}
        backend: app
backends:
  app:
    algorithm: round_robin
    servers:
{servers}
"""


@contextlib.asynccontextmanager
async def browser_page(bypass_csp: bool = True) -> AsyncIterator[Any]:
    """A page; `bypass_csp` lets the test evaluate JavaScript (the dashboard's own CSP forbids
    eval); test_dashboard_works_under_its_own_csp runs without it."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=ARGS,
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1400, "height": 900}, bypass_csp=bypass_csp
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            page.js_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def instance(token: str | None = None) -> AsyncIterator[tuple[Any, str]]:
    servers = await start_named_servers(["alpha", "beta", "gamma"])
    lines = "\n".join(f"      - {{address: 127.0.0.1:{p}, name: {n}}}" for n, _, p in servers)
    text = CONFIG.format(servers=lines, token=f"  token: {token}" if token else "")
    try:
        async with running(text) as engine:
            host, port = engine.bound["web"]
            yield engine, f"http://{host}:{port}"
    finally:
        close_servers(servers)


async def traffic(base: str, stop: asyncio.Event) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=base) as client:
        while not stop.is_set() and sent < 20000:
            r = await client.get(f"/page?n={sent}")
            assert r.status_code == 200
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.01)
    return sent


async def test_dashboard_renders_drains_and_charts_live_traffic() -> None:
    async with instance() as (engine, base), browser_page() as page:
        await page.goto(admin_url(engine) + "/")
        # every server of the running instance, with its state
        await page.wait_for_selector('section.backend[data-backend="app"]', timeout=10000)
        await page.wait_for_function(
            "document.querySelectorAll('section[data-backend=app] tbody tr').length === 3",
            timeout=10000,
        )
        rows = await page.eval_on_selector_all(
            "section[data-backend=app] tbody tr",
            "rows => rows.map(r => [r.dataset.server, r.dataset.state])",
        )
        assert rows == [["alpha", "healthy"], ["beta", "healthy"], ["gamma", "healthy"]]
        version = await page.inner_text("#meta-version")
        assert version == engine.status()["version"]

        # the chart moves under real traffic through the proxy
        stop = asyncio.Event()
        load = asyncio.create_task(traffic(base, stop))
        try:
            await page.wait_for_function(
                "Number(document.querySelector('section[data-backend=app] svg.chart')"
                ".getAttribute('data-max')) > 0",
                timeout=15000,
            )
            # the first sample may hold one server's requests only: wait until every line has
            # a point above its baseline (the assertions below then say which one did not)
            await page.wait_for_function(
                "[...document.querySelectorAll('section[data-backend=app] svg.chart polyline')]"
                ".every(l => { const ys = (l.getAttribute('points') || '').trim().split(/\\s+/)"
                ".map(p => Number(p.split(',')[1])); return Math.min(...ys) < Math.max(...ys); })",
                timeout=15000,
            )
            lines = await page.eval_on_selector_all(
                "section[data-backend=app] svg.chart polyline",
                "ls => ls.map(l => [l.dataset.server, l.getAttribute('points')])",
            )
            assert [name for name, _ in lines] == ["alpha", "beta", "gamma"]
            # every server's line has a point above the baseline (traffic is round robin)
            for _, points in lines:
                ys = [float(p.split(",")[1]) for p in points.split()]
                assert min(ys) < max(ys)
            rps = await page.inner_text('tr[data-server="alpha"] td:nth-child(6)')
            assert rps not in ("–", "0.00")
        finally:
            stop.set()
            sent = await load
        assert sent > 0

        # a click on Drain changes the server's state through the API
        await page.click('tr[data-server="beta"] button[data-action="drain"]')
        await page.wait_for_selector('tr[data-server="beta"][data-state="draining"]', timeout=5000)
        assert engine.backends["app"].servers["beta"].state(engine.clock()) == "draining"
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.get("/api/v1/backends/app/servers/beta")
            assert r.json()["state"] == "draining"
        # ... and the event shows in the list
        await page.wait_for_selector('#events li[data-type="drain"]', timeout=5000)

        # weight change from the page
        await page.fill('tr[data-server="gamma"] input[data-role="weight"]', "5")
        await page.click('tr[data-server="gamma"] button[data-action="weight"]')
        await wait_for(lambda: engine.backends["app"].servers["gamma"].weight == 5)

        # screenshot for a human (tests/artifacts is gitignored)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.wait_for_timeout(1200)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        await page.click('tr[data-server="beta"] button[data-action="enable"]')
        await page.wait_for_selector('tr[data-server="beta"][data-state="healthy"]', timeout=5000)
        assert page.js_errors == []


async def test_dashboard_asks_for_the_token() -> None:
    async with instance(token="dash-token") as (engine, _), browser_page() as page:
        await page.goto(admin_url(engine) + "/")
        # the API answers 401, so the page asks for the token
        await page.wait_for_selector("#token-dialog[open]", timeout=10000)
        await page.fill("#token-input", "dash-token")
        await page.click("#token-save")
        await page.wait_for_function(
            "document.querySelectorAll('section[data-backend=app] tbody tr').length === 3",
            timeout=10000,
        )
        stored = await page.evaluate("sessionStorage.getItem('steelyard-admin-token')")
        assert stored == "dash-token"
        await page.click('tr[data-server="alpha"] button[data-action="disable"]')
        await page.wait_for_selector('tr[data-server="alpha"][data-state="disabled"]', timeout=5000)
        assert engine.backends["app"].servers["alpha"].state(engine.clock()) == "disabled"
        # 401 console messages from before the token was given are expected
        assert not [e for e in page.js_errors if "401" not in e]


async def test_dashboard_works_under_its_own_csp() -> None:
    """No eval here: only CSS selectors, so the page's Content-Security-Policy is enforced and
    any violation by the dashboard's own code would show up as a console error."""
    async with instance() as (engine, _), browser_page(bypass_csp=False) as page:
        response = await page.goto(admin_url(engine) + "/")
        assert response is not None
        assert "script-src 'self'" in response.headers["content-security-policy"]
        for name in ("alpha", "beta", "gamma"):
            await page.wait_for_selector(
                f'section[data-backend="app"] tr[data-server="{name}"][data-state="healthy"]',
                timeout=10000,
            )
        await page.wait_for_selector("#conn.conn-ok", timeout=5000)
        await page.click('tr[data-server="gamma"] button[data-action="drain"]')
        await page.wait_for_selector('tr[data-server="gamma"][data-state="draining"]', timeout=5000)
        # servers added and removed through the API come and go on the page
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.post(
                "/api/v1/backends/app/servers", json={"address": "127.0.0.1:9", "name": "delta"}
            )
            assert r.status_code == 201
            await page.wait_for_selector('tr[data-server="delta"]', timeout=5000)
            await page.wait_for_selector(
                'svg.chart polyline[data-server="delta"]', state="attached", timeout=5000
            )
            r = await client.delete("/api/v1/backends/app/servers/delta")
            assert r.status_code == 200
            await page.wait_for_selector('tr[data-server="delta"]', state="detached", timeout=10000)
        await page.wait_for_selector('#events li[data-type="remove"]', timeout=5000)
        assert page.js_errors == []
