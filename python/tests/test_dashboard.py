"""The master's live dashboard in a real browser: headless Chromium (the system's,
driven by Playwright) loads ``/dashboard`` from a running master with a real client,
and the numbers it renders after puts and gets match ``/metrics``; a screenshot is
saved to ``target/test-artifacts/dashboard.png``."""

import os
import pathlib
import shutil
import urllib.request
import uuid

import pytest

from mooncake.store import MooncakeDistributedStore

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MB = 1 << 20
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "target" / "test-artifacts"


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian package chromium)")
def test_dashboard_renders_what_metrics_say(master, real_client):
    store = MooncakeDistributedStore()
    assert store.setup_dummy(64 * MB, 16 * MB, real_client.address) == 0
    keys = [f"dash-{uuid.uuid4().hex}" for _ in range(12)]
    for k in keys:
        assert store.put(k, os.urandom(50_000)) == 0
    for k in keys[:8]:
        assert len(store.get(k)) == 50_000
    assert store.get(f"dash-missing-{uuid.uuid4().hex}") == b""  # one miss
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{master.metrics_port}/dashboard")
        # Two polls: the second one has a rate window.
        page.wait_for_function("Number(document.body.dataset.polls || 0) >= 2", timeout=20_000)
        m = metrics(master.metrics_port)
        polls = int(page.evaluate("document.body.dataset.polls"))
        page.wait_for_function(f"Number(document.body.dataset.polls) > {polls}", timeout=10_000)
        text = lambda id_: page.inner_text(f"#{id_}")  # noqa: E731
        assert page.inner_text("#error") == ""
        assert int(text("keys")) == int(m["master_key_count"])
        assert int(text("clients")) == int(m["master_active_clients"])
        assert int(text("segment-count")) == int(m["master_segment_count"])
        assert int(text("dummies")) == int(m["master_connected_dummies"])
        assert int(text("puts-total")) == int(
            m["master_batch_put_end_items_total"] + m.get("master_batch_put_commit_items_total", 0))
        assert int(text("lookups-total")) == int(m["master_batch_get_replica_list_items_total"])
        assert int(text("misses-total")) == int(m["master_batch_get_replica_list_failed_items_total"])
        assert int(text("keys")) >= 12 and int(text("misses-total")) >= 1
        lookups = m["master_batch_get_replica_list_items_total"]
        hits = lookups - m["master_batch_get_replica_list_failed_items_total"]
        assert text("hit-ratio") == f"{100 * hits / lookups:.1f}%"
        # The real client's segment, with a usage bar.
        segments = page.inner_text("#segments")
        assert store.get_hostname() in segments and "serving" in segments
        assert page.locator("#segments .bar").count() >= 1
        # Puts while the page watches show up in the chart's rates.
        before = int(page.evaluate("document.body.dataset.polls"))
        for i in range(40):
            assert store.put(f"dash-live-{uuid.uuid4().hex}", b"x" * 1000) == 0
        page.wait_for_function(f"Number(document.body.dataset.polls) > {before + 1}", timeout=10_000)
        rates = page.evaluate("JSON.parse(document.body.dataset.latestRates)")
        assert rates["puts"] > 0, rates
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    # This test's dummy (and the session's others) reached the master's count.
    assert metrics(master.metrics_port)["master_connected_dummies"] >= 1
    store.close()
