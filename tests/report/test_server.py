"""`icl-lab serve`: lists runs, serves their reports, and refuses anything outside RUNS_DIR."""

import http.client
import json
import threading

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


def get(server, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    conn.request("GET", path)  # sent as written: no client-side normalisation of ".."
    r = conn.getresponse()
    return r.status, r.read().decode()


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
