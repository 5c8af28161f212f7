"""The report and the server in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser). Skipped where /usr/bin/chromium is missing, unless ICL_LAB_REQUIRE_BROWSER=1
(set by .ci/run, which installs it), where the absence is a failure."""

import os
import shutil
import threading

import pytest

from icl_lab.report import make_server, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# without the background-networking flags Chromium keeps trying to reach Google's hosts
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("ICL_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is missing; install Debian's chromium (apt-get install chromium)")
        pytest.skip("no /usr/bin/chromium; install Debian's chromium to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    page.close()


@pytest.fixture(scope="module")
def report_file(two, one, tmp_path_factory):
    return write_report([two.path, one.path], out=tmp_path_factory.mktemp("browser") / "report.html").path


def test_report_opens_offline_without_console_errors(page, report_file):
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:")) else route.continue_())
    page.goto(report_file.as_uri())
    page.wait_for_selector("#attn-heatmap .main-svg")
    assert page.errors == []


def test_every_plot_renders_non_empty(page, report_file):
    page.goto(report_file.as_uri())
    page.wait_for_selector("#attn-heatmap .main-svg")
    plots = page.eval_on_selector_all(".plot, #attn-heatmap", """els => els.map(e => ({
        id: e.id, traces: (e.data || []).length, height: e.getBoundingClientRect().height,
        marks: e.querySelectorAll('.scatterlayer path, .heatmaplayer image, .hm image').length}))""")
    assert {p["id"] for p in plots} == {"fig-loss", "fig-position", "fig-pca", "fig-mat", "fig-composition", "attn-heatmap"}
    for p in plots:
        assert p["traces"] > 0 and p["height"] > 200 and p["marks"] > 0, p


def test_checkpoint_slider_changes_the_attention_view(page, report_file):
    page.goto(report_file.as_uri())
    page.wait_for_selector("#attn-heatmap .main-svg")
    read = lambda: page.evaluate("() => [document.getElementById('attn-viewer').dataset.step, "  # noqa: E731
                                 "JSON.stringify(document.getElementById('attn-heatmap').data[0].z)]")
    last_step, last_z = read()
    page.eval_on_selector("#attn-step", "e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    first_step, first_z = read()
    assert first_step != last_step and first_z != last_z
    assert page.inner_text("#attn-step-label").startswith("step 0 ")
    # hovering a destination token shades its sources
    page.hover("#attn-tokens span:nth-child(40)")
    shaded = page.eval_on_selector_all("#attn-tokens span", "s => s.filter(e => e.style.background).length")
    assert shaded == page.eval_on_selector_all("#attn-tokens span", "s => s.length")
    assert page.errors == []


@pytest.fixture(scope="module")
def server(runs_dir):
    srv = make_server(runs_dir, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://%s:%d" % srv.server_address[:2]
    srv.shutdown()
    srv.server_close()


def test_server_lists_runs_and_opens_a_report(page, server):
    page.goto(server + "/")
    links = page.eval_on_selector_all("#runs a", "a => a.map(e => e.textContent)")
    # the shared runs folder: test_server.py may add a "fresh" run first when the files run in another order
    assert [name for name in links if name.startswith("demo/")] == ["demo/one", "demo/two"]
    page.click("text=demo/two")
    page.wait_for_selector("#attn-heatmap .main-svg")
    assert page.title() == "icl-lab report: two" and page.errors == []


def test_server_refuses_dot_dot_paths(page, server):
    # a browser resolves "..", "%2e%2e" included, before sending; an encoded slash gets through it
    response = page.goto(server + "/report/..%2F..%2Fetc")
    assert response.status == 403 and "outside the served runs folder" in page.inner_text("body")
