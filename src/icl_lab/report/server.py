"""`icl-lab serve RUNS_DIR`: a small local web server that lists the runs under RUNS_DIR and opens
their reports, rebuilt when a run's files change, so a page left open follows a run as it trains.

It is built for one researcher's machine:
- it binds 127.0.0.1 by default and refuses any other address unless `allow_remote` is given
  (there is no authentication);
- it answers only requests whose Host header names this server (a DNS-rebinding page cannot
  reach it through another name), with 421 otherwise;
- it serves nothing outside RUNS_DIR: a path that resolves outside it (`..`, a symlink out) gets 403;
- any error becomes a one-line 500 page, never a traceback;
- reports are built in a background thread, never in the request: a request for a report that
  is not built yet gets a page that says so and reloads itself.

Routes: `/` the run list (reloads while a run trains), `/api/runs` the same as JSON, `/report/REL`
the report of the run REL, or of every run directly inside the folder REL.

Example:
    >>> server = make_server("runs", port=0)          # port 0: any free port
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> server.server_address
"""

from __future__ import annotations

import html
import ipaddress
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from icl_lab.errors import ConfigError, IclLabError
from icl_lab.report.build import build_report
from icl_lab.report.collect import is_training
from icl_lab.report.page import asset
from icl_lab.run.files import RunFiles, open_run_files

MAX_DEPTH = 4  # how deep under RUNS_DIR runs are looked for
REFRESH_S = 10  # reload interval of pages that show a training run
BUILDING_REFRESH_S = 2  # reload interval of the page shown while a report is being built


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def find_runs(root: Path) -> list[Path]:
    """Run directories (folders with a config.json) under `root`, at most MAX_DEPTH deep, sorted;
    links that lead outside `root` are not followed."""
    found, inside = [], root.resolve()

    def walk(folder: Path, depth: int) -> None:
        if (folder / "config.json").is_file():
            found.append(folder)
            return  # a run's subfolders (checkpoints, analysis) hold no runs
        if depth < MAX_DEPTH:
            for child in sorted(p for p in folder.iterdir()
                                if p.is_dir() and not p.name.startswith(".") and p.resolve().is_relative_to(inside)):
                walk(child, depth + 1)

    walk(root, 0)
    return found


def run_record(root: Path, path: Path) -> dict:
    """What the run list shows about one run."""
    run = open_run_files(path)
    steps = run.checkpoints
    status = "training" if is_training(run) else run.meta.get("status", "unknown")
    if status in ("running", "stopped"):  # "running" without a live log: the trainer was killed
        status = "stopped (resume with --resume)"
    return {"run": path.relative_to(root).as_posix(), "status": status, "step": steps[-1] if steps else None,
            "steps": run.config.train.steps, "analysed": run.layout.summary.is_file()}


class ReportServer(ThreadingHTTPServer):
    """Serves the run list and reports of `root`; caches each report until its runs change, and
    builds reports in one background thread."""

    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root.resolve()
        self.cache: dict[str, tuple[tuple, str]] = {}
        self.failed: dict[str, tuple[tuple, str]] = {}  # rel -> (key, one-line reason) of the last failed build
        self.building: set[str] = set()
        self.lock = threading.Lock()  # guards the three dicts; one build at a time (builds use every core)
        self.build_lock = threading.Lock()
        super().__init__(address, ReportHandler)
        host, port = self.server_address[:2]
        names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
        self.allowed_hosts = None if host in ("0.0.0.0", "::") else {f"{n}:{port}" for n in names}

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's Host header names this server (any, when bound to every address)."""
        return self.allowed_hosts is None or (header or "").lower() in self.allowed_hosts

    def resolve(self, rel: str) -> Path:
        """`rel` under the root, or ConfigError if it points outside it."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        target = self.root.joinpath(*parts).resolve()
        if ".." in parts or not target.is_relative_to(self.root):
            raise PermissionError(rel)
        return target

    def report(self, rel: str) -> str | None:
        """The report page of `rel` if it is built and up to date, else None (a build is started).

        Raises:
            ConfigError: no run at `rel`, or the last build of this version of it failed.
        """
        target = self.resolve(rel)
        if not target.is_dir():
            raise ConfigError(f"no run at {rel or '.'}")
        paths = [target] if (target / "config.json").is_file() else [p for p in find_runs(target) if p.parent == target]
        if not paths:
            raise ConfigError(f"no run at {rel or '.'}")
        runs = [open_run_files(p) for p in paths]
        key = tuple(_fingerprint(r) for r in runs)
        with self.lock:
            cached, failed = self.cache.get(rel), self.failed.get(rel)
            if cached is not None and cached[0] == key:
                return cached[1]
            if failed is not None and failed[0] == key:
                raise ConfigError(failed[1])
            if rel not in self.building:
                self.building.add(rel)
                threading.Thread(target=self._build, args=(rel, runs, key), daemon=True).start()
        return None

    def _build(self, rel: str, runs: list[RunFiles], key: tuple) -> None:
        try:
            with self.build_lock:
                live = any(is_training(r) for r in runs)
                page, _, _ = build_report(runs, refresh_s=REFRESH_S if live else None)
            with self.lock:
                self.cache[rel] = (key, page)
        except Exception as e:  # noqa: BLE001 — a failed build is shown on the page, not raised in a thread
            reason = str(e).splitlines()[0] if isinstance(e, IclLabError) else f"building the report failed ({type(e).__name__}: {e})"
            print(f"icl-lab serve: {rel or '.'}: {reason}", file=sys.stderr)
            with self.lock:
                self.failed[rel] = (key, reason)
        finally:
            with self.lock:
                self.building.discard(rel)


def _fingerprint(run: RunFiles) -> tuple:
    files = [run.layout.log, run.layout.metrics, run.layout.summary, run.layout.meta]
    stamps = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.is_file() else None for f in files)
    return (str(run.path), stamps, tuple(run.checkpoints))


class ReportHandler(BaseHTTPRequestHandler):
    server: ReportServer

    def log_message(self, format: str, *args) -> None:
        pass

    def _send(self, status: HTTPStatus, body: str, kind: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if not self.server.host_allowed(self.headers.get("Host")):
            host, port = self.server.server_address[:2]
            self._send(HTTPStatus.MISDIRECTED_REQUEST,
                       _message("wrong host", f"this server answers as http://{host}:{port}/ only"))
            return
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self._index())
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, "")
            elif path == "/api/runs":
                self._send(HTTPStatus.OK, json.dumps(self._records()), "application/json")
            elif path.startswith("/report"):
                rel = path.removeprefix("/report").strip("/")
                page = self.server.report(rel)
                self._send(HTTPStatus.OK, page if page is not None else _building(rel))
            else:
                self._send(HTTPStatus.NOT_FOUND, _message("not found", f"no page at {path}"))
        except PermissionError:
            self._send(HTTPStatus.FORBIDDEN, _message("refused", f"{path} is outside the served runs folder"))
        except IclLabError as e:
            self._send(HTTPStatus.NOT_FOUND, _message("not found", str(e)))
        except Exception as e:  # noqa: BLE001 — a bug must cost one request a 500 page, never a traceback
            print(f"icl-lab serve: {path}: {type(e).__name__}: {e}", file=sys.stderr)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _message("server error", f"{type(e).__name__} while serving {path}; "
                                                                  "the terminal running `icl-lab serve` has the details"))

    def _records(self) -> list[dict]:
        return [run_record(self.server.root, p) for p in find_runs(self.server.root)]

    def _index(self) -> str:
        records = self._records()
        folders = sorted({Path(r["run"]).parent.as_posix() for r in records})
        groups = [f for f in folders if sum(Path(r["run"]).parent.as_posix() == f for r in records) > 1]
        rows = "".join(
            f'<tr><td><a href="/report/{quote(r["run"])}">{html.escape(r["run"])}</a></td><td>{html.escape(r["status"])}</td>'
            f'<td class=num>{r["step"] if r["step"] is not None else "-"} / {r["steps"]}</td>'
            f'<td>{"yes" if r["analysed"] else "no"}</td></tr>' for r in records)
        together = "".join(f'<li><a href="/report/{quote(f if f != "." else "")}">all runs in {html.escape(f)}</a></li>'
                           for f in groups)
        refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if any(r["status"] == "training" for r in records) else ""
        body = (f"<section><h2>Runs in {html.escape(str(self.server.root))}</h2>"
                f"<table class=mat id=runs><tr><th>run</th><th>status</th><th>checkpoint step</th><th>analysed</th></tr>{rows}</table>"
                f"{'<ul>' + together + '</ul>' if together else ''}</section>") if records else \
               (f"<section><p class=note>No runs under {html.escape(str(self.server.root))} yet; "
                "train one with <code>icl-lab train</code>.</p></section>")
        return _page("icl-lab runs", body, refresh)


def _page(title: str, body: str, head: str = "") -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>{head}<title>{html.escape(title)}</title>"
            f"<style>{asset('report.css')}</style></head><body><header><h1>{html.escape(title)}</h1></header>"
            f"<main>{body}</main></body></html>")


def _building(rel: str) -> str:
    return _page("building the report", f"<section><p>The report of {html.escape(rel or '.')} is being built; this page "
                 f"reloads every {BUILDING_REFRESH_S} s.</p><p><a href='/'>all runs</a></p></section>",
                 f'<meta http-equiv="refresh" content="{BUILDING_REFRESH_S}">')


def _message(title: str, text: str) -> str:
    return _page(title, f"<section><p>{html.escape(text)}</p><p><a href='/'>all runs</a></p></section>")


def make_server(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False) -> ReportServer:
    """A `ReportServer` for `runs_dir` bound to host:port (not yet serving; call `serve_forever`).

    Args:
        host: the address to bind; anything but a loopback address needs `allow_remote`.
        allow_remote: serve other machines too (there is no authentication: anyone who can reach
            the port can read every report under `runs_dir`).

    Raises:
        ConfigError: `runs_dir` is not a folder, a non-loopback host without `allow_remote`, or
            the port is taken.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; pass the folder that holds your run directories")
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to serve on {host}, which other machines can reach, without authentication; "
                          "use --host 127.0.0.1, or pass --allow-remote if you mean it")
    try:
        return ReportServer(root, (host, port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None
