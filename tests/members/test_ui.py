"""The ui member, served by a real ``web-node ui --in-process`` process and read by a real
headless Chromium (the DOM after the pages' JavaScript ran) and by plain HTTP.

The tests fill the node's own SQLite store from outside, as the api member and
the gateway would, and watch the pages follow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import free_port

from web_node.store import BuildStatus, Component, JobConfig, StepConfig, Store, open_store

CHROMIUM_TIMEOUT_S = 60.0
StartNode = Callable[..., Any]


# ---------------------------------------------------------------- helpers


class Ui:
    """A running ui member and the store it reads."""

    def __init__(self, node: Any, url: str, store: Store) -> None:
        self.node = node
        self.url = url
        self.store = store


@pytest.fixture
def start_ui(start_node: StartNode, data_dir: Path) -> Iterator[Callable[..., Ui]]:
    stores: list[Store] = []

    def start(*flags: str) -> Ui:
        port = free_port()
        config = (f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\n'
                  f'[members.ui]\nlisten = "127.0.0.1:{port}"\n')
        node = start_node(["ui", "--in-process", *flags], config_text=config)
        url = f"http://127.0.0.1:{port}"
        node.wait_http(f"{url}/healthz")
        store = open_store(f"sqlite:///{data_dir}/node.db", str(data_dir))
        stores.append(store)
        return Ui(node, url, store)

    try:
        yield start
    finally:
        for store in stores:
            store.close()


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.fail("chromium is not installed, and the ui tests need a real browser: run make deps")
    return path


@contextlib.contextmanager
def chromium(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium with a private profile, in its own session; the whole session is killed at the end."""
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _finish(proc: subprocess.Popen[bytes], what: str) -> str:
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"chromium did not finish {what} within {CHROMIUM_TIMEOUT_S} s") from None
    assert proc.returncode == 0, f"chromium failed on {what} (status {proc.returncode}):\n{err.decode(errors='replace')[-2000:]}"
    return out.decode()


def dump_dom(tmp_path: Path, url: str) -> str:
    with chromium(tmp_path, "--dump-dom", url) as proc:
        return _finish(proc, url)


class _Texts(HTMLParser):
    """Text content and attributes of the elements that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.text.setdefault(ident, "")
            self.attrs[ident] = dict(attrs)
        if tag not in {"br", "img", "input", "link", "meta", "hr"}:
            self._open.append((tag, ident))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data


def parse(html: str) -> _Texts:
    parser = _Texts()
    parser.feed(html)
    return parser


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON ``data:`` of each server-sent event, with its ``id:`` as ``_id``."""
    data: list[str] = []
    ident: str | None = None
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line.startswith("id:"):
            ident = line[3:].strip()
        elif line == "" and data:
            event = json.loads("\n".join(data))
            event["_id"] = ident
            yield event
            data, ident = [], None


def job(name: str, run: str = "echo hi", every: float | None = None) -> JobConfig:
    return JobConfig(name=name, steps=(StepConfig(run),), trigger_every_s=every)


def started_build(store: Store, pipeline: str, job_name: str, worker: str = "worker-1") -> int:
    now = time.time()
    created = store.create_build(pipeline, job_name, "manual", now)
    claimed = store.claim_pending_build(worker, now)
    assert claimed is not None and claimed.id == created.id
    store.append_event(created.id, "status", {"status": "started", "worker": worker}, now)
    return created.id


def log(store: Store, build_id: int, text: str, step: int = 0) -> None:
    store.append_event(build_id, "log", {"output": text, "step": step}, time.time())


def end(store: Store, build_id: int, status: BuildStatus, message: str | None = None) -> None:
    now = time.time()
    if message:
        store.append_event(build_id, "error", {"message": message}, now)
    store.append_event(build_id, "finish", {"status": status}, now)
    store.finish_build(build_id, status, now)


# ---------------------------------------------------------------- pages in a real browser


def test_pipelines_and_pipeline_pages_in_chromium(start_ui: Callable[..., Ui], tmp_path: Path) -> None:
    ui = start_ui()
    ui.store.set_pipeline("release-train", {}, [job("unit-tests", every=300), job("package")])
    ui.store.set_pipeline("docs <site>", {}, [job("publish")])
    build_id = started_build(ui.store, "release-train", "unit-tests")
    end(ui.store, build_id, "succeeded")

    index = dump_dom(tmp_path, ui.url + "/")
    for text in ("release-train", "unit-tests", "package", "never built", "docs &lt;site&gt;", "publish",
                 f'href="/builds/{build_id}"', 'class="status status-succeeded"', "every 5m00s"):
        assert text in index, f"{text!r} missing from the pipelines page:\n{index}"

    page = dump_dom(tmp_path, ui.url + "/pipelines/release-train")
    assert "release-train" in page and "unit-tests" in page and "package" in page
    assert "<code>echo hi</code>" in page
    assert f"#{build_id}" in page and "worker-1" in page and "Recent builds" in page
    assert "publish" not in page  # another pipeline's jobs stay off this page


def test_build_page_follows_the_live_log_in_chromium(start_ui: Callable[..., Ui], tmp_path: Path) -> None:
    ui = start_ui()
    ui.store.set_pipeline("main", {}, [job("unit", run="make test")])
    build_id = started_build(ui.store, "main", "unit")
    log(ui.store, build_id, "collecting tests\n<b>not markup</b>\n")
    log(ui.store, build_id, "\x1b[32m41 passed\x1b[0m\n")
    url = f"{ui.url}/builds/{build_id}"

    # The server sends no log text: whatever the browser shows came through the live stream.
    served = httpx.get(url).text
    assert "collecting tests" not in served and "41 passed" not in served

    with chromium(tmp_path, "--dump-dom", url) as proc:
        # The build is still running: the page holds its stream open (Chromium's virtual time waits
        # for it), and the rest of the build arrives while the page watches.
        time.sleep(1.5)
        log(ui.store, build_id, "step 2: linking\n", step=1)
        end(ui.store, build_id, "failed", "step 2 exited with status 3")
        dom = _finish(proc, url)

    texts = parse(dom)
    shown = texts.text["log"]
    assert "collecting tests\n<b>not markup</b>\n41 passed\nstep 2: linking\n" in shown, shown  # no colour codes
    assert "step 2 exited with status 3" in shown
    assert "build failed" in shown
    assert texts.text["build-status"] == "failed"
    assert texts.attrs["build-status"]["class"] == "status status-failed"
    assert texts.text["log-state"] == "finished: failed"
    assert "<b>" not in dom.split('id="log"', 1)[1].split("</pre>", 1)[0]  # log text is text, never markup


def test_build_page_screenshot(start_ui: Callable[..., Ui], tmp_path: Path) -> None:
    ui = start_ui()
    ui.store.set_pipeline("main", {}, [job("unit", run="echo hello && sleep 1")])
    build_id = started_build(ui.store, "main", "unit")
    for i in range(1, 6):
        log(ui.store, build_id, f"line {i} of the build's output\n")
    end(ui.store, build_id, "succeeded")
    png = tmp_path / "build.png"

    with chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,800", f"{ui.url}/builds/{build_id}") as proc:
        _finish(proc, "the screenshot")

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 800)
    assert len(data) > 10_000  # a rendered page, not a blank one


def test_members_page_refreshes_from_members_json_in_chromium(start_ui: Callable[..., Ui], tmp_path: Path) -> None:
    ui = start_ui()
    now = time.time()
    ui.store.register_component(Component(name="scheduler", group="backend", host="other-host", pid=4242,
                                          started_at=now - 600, heartbeat_at=now - 300, interval_s=10.0,
                                          last_run_at=now - 305))
    dom = dump_dom(tmp_path, ui.url + "/members")

    texts = parse(dom)
    assert texts.attrs["members"].get("data-refreshed-at"), "the page's script never refreshed the table"
    table = texts.text["members"]
    for text in ("ui", "scheduler", "backend", "other-host", "4242", str(ui.node.pid), "stale", "running"):
        assert text in table, f"{text!r} missing from the members table:\n{table}"
    assert "Live charts" in dom


# ---------------------------------------------------------------- plain HTTP


def test_members_json(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    now = time.time()
    ui.store.register_component(Component(name="gc", group="backend", host="h2", pid=77, started_at=now - 100,
                                          heartbeat_at=now - 95, interval_s=30.0, last_run_at=now - 96))
    ui.store.set_component_paused("gc", True)

    doc = httpx.get(ui.url + "/members.json").json()

    assert doc["now"] == pytest.approx(time.time(), abs=10)
    rows = {c["name"]: c for c in doc["components"]}
    assert rows["ui"]["pid"] == ui.node.pid and rows["ui"]["group"] == "ui" and rows["ui"]["stale"] is False
    assert rows["ui"]["last_run_at"] is None
    gc = rows["gc"]
    assert (gc["group"], gc["host"], gc["pid"], gc["paused"], gc["stale"]) == ("backend", "h2", 77, True, True)
    assert gc["heartbeat_age_s"] == pytest.approx(95, abs=10)
    assert gc["last_run_age_s"] == pytest.approx(96, abs=10)


def test_event_stream_replays_follows_and_closes(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    ui.store.set_pipeline("main", {}, [job("unit")])
    build_id = started_build(ui.store, "main", "unit")
    log(ui.store, build_id, "first\n")
    url = f"{ui.url}/builds/{build_id}/events"

    with httpx.stream("GET", url, timeout=10.0) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        replayed = [next(events), next(events)]
        assert [(e["seq"], e["type"], e["_id"]) for e in replayed] == [(1, "status", "1"), (2, "log", "2")]
        log(ui.store, build_id, "second\n")  # written while the stream is open
        follow = next(events)
        assert (follow["seq"], follow["payload"]["output"]) == (3, "second\n")
        end(ui.store, build_id, "succeeded")
        assert [e["type"] for e in events] == ["finish"]  # and then the stream ends

    # A browser that reconnects says where it stopped; the stream goes on from there.
    with httpx.stream("GET", url, headers={"Last-Event-ID": "3"}, timeout=10.0) as response:
        assert [(e["seq"], e["type"]) for e in sse_events(response)] == [(4, "finish")]


def test_event_stream_ends_for_finished_and_deleted_builds(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    ui.store.set_pipeline("main", {}, [job("unit")])
    ui.store.set_pipeline("doomed", {}, [job("unit")])
    # Finished without a finish event (as an old or foreign writer may leave it): the stream says so itself.
    quiet = started_build(ui.store, "main", "unit")
    ui.store.finish_build(quiet, "errored", time.time())
    with httpx.stream("GET", f"{ui.url}/builds/{quiet}/events", timeout=10.0) as response:
        replayed = list(sse_events(response))
    assert [(e["type"], e["payload"]) for e in replayed][-1] == ("finish", {"status": "errored"})

    doomed = started_build(ui.store, "doomed", "unit")
    with httpx.stream("GET", f"{ui.url}/builds/{doomed}/events", timeout=10.0) as response:
        events = sse_events(response)
        assert next(events)["type"] == "status"
        ui.store.delete_pipeline("doomed")
        rest = list(events)
    assert [e["type"] for e in rest] == ["deleted"]
    assert f"build {doomed} was deleted" in rest[0]["payload"]["message"]

    missing = httpx.get(f"{ui.url}/builds/999/events")
    assert missing.status_code == 404 and missing.json() == {"error": "build 999 does not exist"}


def test_unknown_build_and_pipeline_are_html_404_pages(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    for path, says in (("/builds/4711", "There is no build 4711."),
                       ("/pipelines/nowhere", "There is no pipeline named “nowhere”."),
                       ("/no/such/page", "Not found")):
        response = httpx.get(ui.url + path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert says in response.text, response.text
        assert "Traceback" not in response.text
    page = httpx.get(ui.url + "/")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert httpx.get(ui.url + "/static/ui.css").headers["content-type"].startswith("text/css")


def test_a_disabled_page_answers_404_and_leaves_the_others(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui("--disable-endpoint", "UiMembers")

    page = httpx.get(ui.url + "/members")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "endpoint UiMembers is disabled by configuration" in page.text

    home = httpx.get(ui.url + "/")
    assert home.status_code == 200
    assert 'href="/members"' not in home.text  # no link to a page that is switched off
    assert httpx.get(ui.url + "/members.json").status_code == 200
