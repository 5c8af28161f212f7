"""`icl-lab serve`: lists runs, serves their reports, and refuses anything outside RUNS_DIR."""

import http.client
import json
import threading
import time

import pytest

from icl_lab.errors import ConfigError
from icl_lab.report import make_server
from icl_lab.report.server import find_runs


@pytest.fixture(scope="module")
def server(runs_dir):
    (runs_dir / "escape").symlink_to(runs_dir.parent, target_is_directory=True)  # a link that leads out
    srv = make_server(runs_dir, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str, host: str | None = None, wait: bool = True) -> tuple[int, str]:
    """GET `path`; with `wait`, until a report that is being built is there (reports build in the background)."""
    deadline = time.monotonic() + 120
    while True:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        conn.putrequest("GET", path, skip_host=host is not None)  # sent as written: no client-side normalisation of ".."
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        status, body = r.status, r.read().decode()
        if not (wait and "is being built" in body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


def test_lists_runs(server, runs_dir):
    assert [p.relative_to(runs_dir).as_posix() for p in find_runs(runs_dir)] == ["demo/one", "demo/two"]
    status, body = get(server, "/api/runs")
    records = {r["run"]: r for r in json.loads(body)}
    assert status == 200 and set(records) == {"demo/one", "demo/two"}
    assert records["demo/two"]["status"] == "complete" and records["demo/two"]["analysed"] is True
    status, page = get(server, "/")
    assert status == 200 and 'href="/report/demo/two"' in page and 'href="/report/demo"' in page


def test_serves_one_report_and_a_folder_of_runs(server):
    status, page = get(server, "/report/demo/two")
    assert status == 200 and "icl-lab report: two" in page and 'http-equiv="refresh"' not in page
    status, page = get(server, "/report/demo")
    assert status == 200 and "icl-lab report: one, two" in page
    assert get(server, "/report/nowhere")[0] == 404


@pytest.mark.parametrize("path", ["/report/../../etc", "/report/demo/../../..", "/report/%2e%2e/%2e%2e/etc",
                                  "/report/escape", "/report/escape/x"])
def test_refuses_paths_outside_the_runs_folder(server, path):
    status, page = get(server, path)
    assert status == 403 and "outside the served runs folder" in page


def test_report_is_cached_until_the_run_changes(server, two):
    get(server, "/report/demo/two")
    first = server.cache["demo/two"]
    get(server, "/report/demo/two")
    assert server.cache["demo/two"] is first
    two.layout.log.touch()
    get(server, "/report/demo/two")
    assert server.cache["demo/two"] is not first


def test_bad_folder_or_port_is_a_clear_error(tmp_path, server):
    with pytest.raises(ConfigError, match="is not a folder"):
        make_server(tmp_path / "missing")
    with pytest.raises(ConfigError, match="pass another --port"):
        make_server(tmp_path, port=server.server_address[1])


def test_refuses_remote_hosts_unless_allowed(tmp_path):
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0.*--allow-remote"):
        make_server(tmp_path, host="0.0.0.0", port=0)
    srv = make_server(tmp_path, host="0.0.0.0", port=0, allow_remote=True)
    srv.server_close()


def test_answers_only_its_own_host_name(server):
    port = server.server_address[1]
    assert get(server, "/api/runs", host=f"127.0.0.1:{port}")[0] == 200
    assert get(server, "/api/runs", host=f"localhost:{port}")[0] == 200
    status, page = get(server, "/api/runs", host=f"evil.example:{port}")  # a DNS-rebinding page's request
    assert status == 421 and "answers as" in page
    assert get(server, "/api/runs", host="127.0.0.1:1")[0] == 421


def test_a_bug_is_a_500_page_without_a_traceback(server, monkeypatch):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(server), "report", lambda self, rel: broken(self))
    status, page = get(server, "/report/demo/two")
    assert status == 500 and "RuntimeError" in page and "Traceback" not in page


def test_the_request_never_builds_the_report(server, two):
    two.layout.log.touch()  # the cached page is stale now
    t0 = time.monotonic()
    status, page = get(server, "/report/demo/two", wait=False)
    assert status == 200 and "is being built" in page and 'http-equiv="refresh"' in page
    assert time.monotonic() - t0 < 2.0
    status, page = get(server, "/report/demo/two")  # and the page arrives once built
    assert status == 200 and "icl-lab report: two" in page


def test_an_unanalysed_run_is_served_without_loading_a_checkpoint(server, runs_dir, monkeypatch):
    """A fresh run: the page shows its loss curve and names the command that fills each gap,
    and no checkpoint (or model) is touched to answer."""
    import icl_lab
    from tests.conftest import refuse_checkpoints

    icl_lab.train(icl_lab.get_preset("synthetic-1l").replace(train={"steps": 20, "warmup_steps": 5, "n_checkpoints": 4}),
                  out=runs_dir / "fresh")
    refuse_checkpoints(monkeypatch, "serve loaded a checkpoint")
    status, page = get(server, "/report/fresh")
    assert status == 200 and "icl-lab report: fresh" in page
    assert f"icl-lab analyze {runs_dir / 'fresh'}" in page and "not analysed yet" in page
    assert "serve loaded a checkpoint" not in page
