"""The whole loop from the command line: ``web-node web --in-process`` plus ``web-node worker``,
as two real processes, driven through the real API.

The scheduler triggers a build, the worker runs its steps, the API's event
stream shows the output; failing steps fail builds; an abort kills the
build's processes; SIGTERM errors the running build; the build-tracker errors
the build of a worker that was SIGKILLed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import free_port

API_TOKEN = "api-token-for-tests"
WORKER_TOKEN = "worker-token-for-tests"
BUILD_USER = "web-node-build"  # the account build steps run as (the worker refuses root by default)


@pytest.fixture(scope="session")
def build_user() -> str:
    """The build user, created as ``quickstart`` creates it (a system account, no home, no login)."""
    from web_node.privilege import ensure_system_user

    return ensure_system_user(BUILD_USER).name


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, *, logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{logs()}")
        time.sleep(0.1)


def pids_running(argv: list[str]) -> list[int]:
    """Pids whose command line is exactly ``argv`` (how a step's unique sleep is found)."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == wanted:
                    found.append(int(entry))
        except OSError:
            continue
    return found


@dataclass
class Api:
    base: str
    token: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers={"Authorization": f"Bearer {self.token}"},
                             timeout=10.0, **kwargs)

    def set_pipeline(self, name: str, config: dict[str, Any]) -> None:
        response = self.call("PUT", f"/api/v1/pipelines/{name}", json=config)
        assert response.status_code in (200, 201), response.text

    def create_build(self, pipeline: str, job: str) -> dict[str, Any]:
        response = self.call("POST", f"/api/v1/pipelines/{pipeline}/jobs/{job}/builds")
        assert response.status_code == 201, response.text
        build: dict[str, Any] = response.json()
        return build

    def build(self, build_id: int) -> dict[str, Any]:
        response = self.call("GET", f"/api/v1/builds/{build_id}")
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def job_builds(self, pipeline: str, job: str) -> list[dict[str, Any]]:
        response = self.call("GET", f"/api/v1/pipelines/{pipeline}/jobs/{job}/builds")
        assert response.status_code == 200, response.text
        doc = response.json()
        builds: list[dict[str, Any]] = doc["builds"] if isinstance(doc, dict) else doc
        return builds

    def events(self, build_id: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Every event of the build from the server-sent event stream, which ends once the build has finished."""
        events = []
        with httpx.stream("GET", f"{self.base}/api/v1/builds/{build_id}/events", timeout=timeout,
                          headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[len("data:"):]))
        return events


@dataclass
class Loop:
    """A node and a worker, both real processes."""

    node: Any
    api: Api
    gateway: str
    data_dir: Path
    start_node: Any
    cgroup_root: str
    worker: Any = None

    def start_worker(self, *extra: str, name: str = "w1", token_args: tuple[str, ...] = ("--token", WORKER_TOKEN),
                     env: dict[str, str] | None = None) -> Any:
        self.worker = self.start_node(
            ["worker", "--gateway", self.gateway, *token_args, "--name", name,
             "--work-dir", str(self.data_dir / f"work-{name}"), "--cgroup-root", f"{self.cgroup_root}/{name}",
             "--poll-interval", "200ms", "--stop-grace", "0s", "--user", BUILD_USER, *extra], env=env)
        self.worker.wait_log("registered with", timeout=20)
        return self.worker

    def logs(self) -> str:
        return f"--- node:\n{self.node.log()}\n--- worker:\n{self.worker.log() if self.worker else '(none)'}"

    def wait_status(self, build_id: int, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        build: dict[str, Any] = wait_for(
            f"build {build_id} to reach {statuses}",
            lambda: (b := self.api.build(build_id)) and b["status"] in statuses and b, timeout, logs=self.logs)
        return build


@pytest.fixture
def sleeps() -> Iterator[Callable[[], list[str]]]:
    """Unique ``sleep`` command lines for steps; any still running at the end are killed (and fail the test)."""
    made: list[list[str]] = []

    def make() -> list[str]:
        argv = ["sleep", f"{random.randint(40, 99)}.{random.randint(100000, 999999)}"]
        made.append(argv)
        return argv

    yield make
    leftovers = [pid for argv in made for pid in pids_running(argv)]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"build processes outlived the test: {leftovers}"


def node_config(data_dir: Path, api_port: int, gateway_port: int, *, worker_token: str | None = WORKER_TOKEN) -> str:
    worker_token_line = f'worker_token = "{worker_token}"\n' if worker_token else ""
    return (
        f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "2s"\n'
        f'[members.api]\nlisten = "127.0.0.1:{api_port}"\ntoken = "{API_TOKEN}"\n'
        f'[members.ui]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[members.gateway]\nlisten = "127.0.0.1:{gateway_port}"\n{worker_token_line}'
        '[members.scheduler]\ninterval = "1s"\n'
        '[members.build-tracker]\ninterval = "1s"\nworker_timeout = "3s"\n'
    )


@pytest.fixture
def make_loop(cgroup_root: str, sleeps: Callable[[], list[str]], start_node: Any,
              data_dir: Path, build_user: str) -> Iterator[Callable[..., Loop]]:
    # Fixture order matters at teardown (reverse of setup): the processes stop first, then
    # leftover sleeps are looked for, then the cgroup tree is removed.
    def make(**config: Any) -> Loop:
        api_port, gateway_port = free_port(), free_port()
        node = start_node(["web", "--in-process"], config_text=node_config(data_dir, api_port, gateway_port, **config))
        gateway = f"http://127.0.0.1:{gateway_port}"
        node.wait_http(f"{gateway}/gateway/v1/info")
        node.wait_http(f"http://127.0.0.1:{api_port}/api/v1/info")
        loop = Loop(node=node, api=Api(f"http://127.0.0.1:{api_port}", API_TOKEN), gateway=gateway,
                    data_dir=data_dir, start_node=start_node, cgroup_root=cgroup_root)
        loops.append(loop)
        return loop

    loops: list[Loop] = []
    yield make
    # Workers stop first, while their gateway still answers.
    for loop in loops:
        if loop.worker is not None:
            loop.worker.stop()


def log_text(events: list[dict[str, Any]]) -> str:
    return "".join(str(e["payload"].get("output", "")) for e in events if e["type"] == "log")


def test_scheduled_build_runs_and_streams_its_output(make_loop: Callable[..., Loop]) -> None:
    loop = make_loop(worker_token=None)  # the gateway generates the token into data_dir
    token_file = loop.data_dir / "worker-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    loop.start_worker(token_args=("--token-file", str(token_file)))
    loop.api.set_pipeline("p", {"jobs": [
        {"name": "hello", "trigger_every": "1s", "steps": [{"run": "echo hello"}, {"run": "echo from step two >&2"}]},
        {"name": "broken", "steps": [{"run": "echo before"}, {"run": "exit 3"}, {"run": "echo never"}]},
        {"name": "chatty", "steps": [{"run": "seq 1 50000"}]},
    ]})

    first = wait_for("a scheduled build", lambda: loop.api.job_builds("p", "hello"), logs=loop.logs)[-1]
    build = loop.wait_status(first["id"], {"succeeded", "failed", "errored"})
    assert build["status"] == "succeeded", loop.logs()
    assert build["worker"] == "w1"
    events = loop.api.events(build["id"])
    assert "hello\n" in log_text(events) and "from step two\n" in log_text(events)
    assert events[0]["type"] == "status"
    assert events[-1]["type"] == "finish" and events[-1]["payload"]["status"] == "succeeded"

    broken = loop.api.create_build("p", "broken")
    assert loop.wait_status(broken["id"], {"succeeded", "failed", "errored"})["status"] == "failed"
    text = log_text(loop.api.events(broken["id"]))
    assert "before" in text and "step 2 exited with status 3" in text and "never" not in text

    # Much output arrives whole and in order (in several events).
    chatty = loop.api.create_build("p", "chatty")
    assert loop.wait_status(chatty["id"], {"succeeded", "failed", "errored"})["status"] == "succeeded"
    events = loop.api.events(chatty["id"])
    assert log_text(events) == "".join(f"{i}\n" for i in range(1, 50001)), [(e["type"], len(str(e["payload"]))) for e in events]


def test_abort_kills_the_running_build(make_loop: Callable[..., Loop], sleeps: Callable[[], list[str]]) -> None:
    loop = make_loop()
    loop.start_worker("--no-cgroups")  # process groups alone are enough to stop a step
    sleep = sleeps()
    loop.api.set_pipeline("p", {"jobs": [{"name": "sleepy", "steps": [{"run": "echo started && " + " ".join(sleep)}]}]})
    build = loop.api.create_build("p", "sleepy")
    loop.wait_status(build["id"], {"started"})
    wait_for("the step's sleep to run", lambda: pids_running(sleep), logs=loop.logs)
    time.sleep(0.5)  # the worker sends output at once after a quiet spell; "started" is stored by now

    response = loop.api.call("PUT", f"/api/v1/builds/{build['id']}/abort")
    assert response.status_code in (200, 202, 204), response.text

    assert loop.wait_status(build["id"], {"aborted", "succeeded", "failed", "errored"})["status"] == "aborted"
    wait_for("the aborted build's sleep to be gone", lambda: not pids_running(sleep), timeout=10, logs=loop.logs)
    assert "started" in log_text(loop.api.events(build["id"]))
    # The worker takes the next build.
    again = loop.api.create_build("p", "sleepy")
    loop.wait_status(again["id"], {"started"})


def test_sigterm_errors_the_running_build(make_loop: Callable[..., Loop], sleeps: Callable[[], list[str]]) -> None:
    loop = make_loop()
    worker = loop.start_worker("--stop-grace", "500ms", token_args=(), env={"WEB_NODE_WORKER_TOKEN": WORKER_TOKEN})
    sleep = sleeps()
    step = 'echo "token=${WEB_NODE_WORKER_TOKEN:-not given} build=$BUILD_ID job=$BUILD_JOB_NAME" && ' + " ".join(sleep)
    loop.api.set_pipeline("p", {"jobs": [{"name": "sleepy", "steps": [{"run": step}]}]})
    build = loop.api.create_build("p", "sleepy")
    loop.wait_status(build["id"], {"started"})
    wait_for("the step's sleep to run", lambda: pids_running(sleep), logs=loop.logs)

    assert worker.terminate() == 0, loop.logs()

    assert not pids_running(sleep)
    assert loop.api.build(build["id"])["status"] == "errored"
    events = loop.api.events(build["id"])
    errors = [e["payload"]["message"] for e in events if e["type"] == "error"]
    assert errors and "worker w1 was stopped (SIGTERM)" in errors[0]
    # The worker's token never reaches a build; the build's own facts do.
    assert f"token=not given build={build['id']} job=sleepy\n" in log_text(events)


def test_build_tracker_errors_the_build_of_a_killed_worker(make_loop: Callable[..., Loop],
                                                           sleeps: Callable[[], list[str]]) -> None:
    loop = make_loop()
    worker = loop.start_worker(name="doomed")
    sleep = sleeps()
    loop.api.set_pipeline("p", {"jobs": [{"name": "sleepy", "steps": [{"run": " ".join(sleep)}]}]})
    build = loop.api.create_build("p", "sleepy")
    loop.wait_status(build["id"], {"started"})

    os.kill(worker.pid, signal.SIGKILL)  # no goodbye: only the missing heartbeats tell

    errored = loop.wait_status(build["id"], {"errored", "failed", "succeeded", "aborted"}, timeout=15)
    assert errored["status"] == "errored"
    errors = [e["payload"]["message"] for e in loop.api.events(build["id"]) if e["type"] == "error"]
    assert errors and "worker doomed sent no heartbeat" in errors[0], loop.logs()
    loop.node.wait_log("build-tracker")

    # Its orphaned step (still in the killed worker's cgroup) is killed when a worker of that name starts again.
    # Without writable cgroups nothing can find it: the test kills it itself.
    if "each build runs in its own cgroup" not in worker.log():
        for pid in pids_running(sleep):
            os.kill(pid, signal.SIGKILL)
        return
    loop.start_worker(name="doomed")
    wait_for("the orphaned sleep to be killed", lambda: not pids_running(sleep), timeout=10, logs=loop.logs)


def test_a_build_past_its_timeout_is_killed_and_failed(make_loop: Callable[..., Loop],
                                                       sleeps: Callable[[], list[str]]) -> None:
    loop = make_loop()
    loop.start_worker()
    sleep = sleeps()
    loop.api.set_pipeline("p", {"jobs": [{"name": "slow", "timeout": "2s", "steps": [{"run": " ".join(sleep)}]}]})
    build = loop.api.create_build("p", "slow")
    assert loop.wait_status(build["id"], {"failed", "errored", "succeeded", "aborted"}, timeout=15)["status"] == "failed"
    errors = [e["payload"]["message"] for e in loop.api.events(build["id"]) if e["type"] == "error"]
    assert errors == ["timed out after 2s"], loop.logs()
    wait_for("the timed-out build's sleep to be gone", lambda: not pids_running(sleep), timeout=10, logs=loop.logs)


def test_gateway_protocol(start_node: Any, data_dir: Path, build_user: str) -> None:
    """The gateway's endpoints one by one, as a worker would call them (the node runs the gateway only)."""
    from web_node.store import JobConfig, StepConfig, open_store

    port = free_port()
    node = start_node(["gateway", "--in-process"], config_text=(
        f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
        f'[members.gateway]\nlisten = "127.0.0.1:{port}"\nworker_token = "{WORKER_TOKEN}"\n'))
    base = f"http://127.0.0.1:{port}/gateway/v1"
    info = node.wait_http(f"{base}/info")
    assert info.status_code == 200 and info.json()["heartbeat_interval_s"] == 7.5  # a quarter of the default 30s
    auth = {"Authorization": f"Bearer {WORKER_TOKEN}"}

    def call(method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, base + path, json=body, headers=kwargs.pop("headers", auth), timeout=10, **kwargs)

    unauthorized = call("POST", "/workers", {"name": "w1"}, headers={})
    assert unauthorized.status_code == 401 and "worker token" in unauthorized.json()["error"]
    assert call("POST", "/workers", {"name": "bad name!"}).status_code == 400
    registered = call("POST", "/workers", {"name": "w1", "platform": "linux/x86_64", "tags": ["fast"]})
    assert registered.status_code == 201 and registered.json()["worker"]["tags"] == ["fast"]
    credential = registered.json()["credential"]  # w1's own; the shared token only registers
    w1 = {"Authorization": f"Bearer {credential}"}
    assert call("POST", "/workers/w1/claim", {}, headers=w1).json() == {"build": None}

    store = open_store(f"sqlite:///{data_dir}/node.db", str(data_dir))
    try:
        store.set_pipeline("p", {}, [JobConfig("j", (StepConfig("echo one"), StepConfig("echo two")), timeout_s=90)])
        created = store.create_build("p", "j", "manual", time.time())
        claimed = call("POST", "/workers/w1/claim", {"active_builds": 0}, headers=w1).json()["build"]
        assert claimed["id"] == created.id and claimed["worker"] == "w1" and claimed["status"] == "started"
        assert claimed["steps"] == [{"run": "echo one"}, {"run": "echo two"}] and claimed["timeout_s"] == 90
        events = f"/builds/{created.id}/events"

        assert call("POST", events, {"worker": "w2", "seq": 1, "events": []}, headers=w1).status_code == 403  # not w2
        finish_event = {"worker": "w1", "seq": 1, "events": [{"type": "finish", "payload": {}}]}
        assert call("POST", events, finish_event, headers=w1).status_code == 400
        one = {"worker": "w1", "seq": 1, "events": [{"type": "log", "payload": {"output": "one\n", "step": 0}}]}
        sent = call("POST", events, one, headers=w1)
        assert sent.json() == {"accepted": 1, "duplicate": False, "status": "started", "abort": False}
        assert call("PUT", "/workers/w1/heartbeat", {"builds": [created.id]}, headers=w1).json()["abort"] == []

        # Aborted elsewhere: heartbeat and event posts tell the worker to stop, and keep nothing more.
        store.finish_build(created.id, "aborted", time.time())
        beat = call("PUT", "/workers/w1/heartbeat", {"active_builds": 1, "builds": [created.id]}, headers=w1).json()
        assert beat["abort"] == [{"id": created.id, "status": "aborted"}]
        late_log = {"worker": "w1", "seq": 2, "events": [{"type": "log", "payload": {"output": "x"}}]}
        assert call("POST", events, late_log, headers=w1).json() == {
            "accepted": 0, "duplicate": False, "status": "aborted", "abort": True}
        late = call("PUT", f"/builds/{created.id}/finish", {"worker": "w1", "status": "succeeded"}, headers=w1).json()
        assert late["accepted"] is False and late["build"]["status"] == "aborted"
        assert [e.type for e in store.list_events(created.id)] == ["log", "finish"]

        # A worker that registers again (restarted) without a build it was running: that build is errored.
        lost = store.create_build("p", "j", "manual", time.time())
        assert call("POST", "/workers/w1/claim", {}, headers=w1).json()["build"]["id"] == lost.id
        again = call("POST", "/workers", {"name": "w1", "builds": [], "credential": credential})
        assert again.status_code == 201 and "credential" not in again.json()  # kept, not handed out again
        assert store.get_build(lost.id).status == "errored"
        lost_events = store.list_events(lost.id)
        assert "registered again" in lost_events[0].payload["message"] and lost_events[-1].payload == {"status": "errored"}

        # A result with a message: an error event, then finish, then the status.
        kept = store.create_build("p", "j", "manual", time.time())
        call("POST", "/workers/w1/claim", {}, headers=w1)
        assert call("PUT", f"/builds/{kept.id}/finish", {"worker": "w1", "status": "aborted"}, headers=w1).status_code == 400
        done = call("PUT", f"/builds/{kept.id}/finish", {"worker": "w1", "status": "errored", "message": "disk full"},
                    headers=w1)
        assert done.json()["accepted"] is True and done.json()["build"]["status"] == "errored"
        assert [(e.type, e.payload) for e in store.list_events(kept.id)] == [
            ("error", {"message": "disk full"}), ("finish", {"status": "errored"})]
    finally:
        store.close()
    assert call("PUT", "/workers/nobody/heartbeat", {}, headers=w1).status_code == 403
    assert call("PUT", "/builds/999/finish", {"worker": "w1", "status": "failed"}, headers=w1).status_code == 404

    # A worker with the wrong token says so and exits with the configuration-error status.
    worker = start_node(["worker", "--gateway", f"http://127.0.0.1:{port}", "--token", "wrong-token", "--name", "w9",
                         "--work-dir", str(data_dir / "w9"), "--no-cgroups", "--user", build_user])
    assert worker.proc.wait(20) == 2
    assert "refused the worker token" in worker.log()


def test_quickstart_takes_data_dir_from_flag_then_config_file_then_default(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A key given in a config file is never overridden by quickstart's own default (./web-node-data)."""
    from web_node.members import default_registry
    from web_node.quickstart import load_quickstart_config

    registry = default_registry()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEB_NODE_CONFIG", raising=False)
    config_file = tmp_path / "node.toml"
    config_file.write_text('[node]\ndata_dir = "/srv/from-the-file"\n')
    assert load_quickstart_config(registry, str(config_file)).node.data_dir == "/srv/from-the-file"
    assert load_quickstart_config(registry, str(config_file), data_dir="flag-dir").node.data_dir == str(tmp_path / "flag-dir")
    assert load_quickstart_config(registry, None).node.data_dir == str(tmp_path / "web-node-data")
    monkeypatch.setenv("WEB_NODE_CONFIG", str(config_file))
    assert load_quickstart_config(registry, None).node.data_dir == "/srv/from-the-file"
    # The groups' user likewise: quickstart's choice only where the file says nothing ("" = stay as the node).
    config_file.write_text('[node]\nuser = ""\n')
    assert load_quickstart_config(registry, str(config_file), user="web-node").node.user is None
    assert load_quickstart_config(registry, None, user="web-node").node.user is None  # WEB_NODE_CONFIG, still
    monkeypatch.delenv("WEB_NODE_CONFIG")
    assert load_quickstart_config(registry, None, user="web-node").node.user == "web-node"


def _alive(pid: int) -> bool:
    """Running (a zombie, or a pid that is gone, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_quickstart_worker_and_its_build_die_with_the_node(start_node: Any, cgroup_root: str, tmp_path: Path,
                                                           sleeps: Callable[[], list[str]]) -> None:
    """kill -9 of the quickstart node: its worker reads EOF on its lifeline, kills the running build and exits.
    Started as a new user would start it, with the data dir given only in the config file."""
    import re

    from web_node.quickstart import worker_work_dir

    data_dir = tmp_path / "from-config"
    api_port = free_port()
    config = node_config(data_dir, api_port, free_port(), worker_token=None)
    config = config.replace("[node]\n", f'[node]\ncgroup_root = "{cgroup_root}"\n', 1)
    try:
        node = start_node(["quickstart"], config_text=config)
        node.wait_log("registered with", timeout=60)
        assert (data_dir / "worker-token").exists() and not (tmp_path / "web-node-data").exists()
        api = Api(f"http://127.0.0.1:{api_port}", API_TOKEN)
        sleep = sleeps()
        api.set_pipeline("p", {"jobs": [{"name": "sleepy", "steps": [{"run": " ".join(sleep)}]}]})
        api.create_build("p", "sleepy")
        wait_for("the build's sleep to run", lambda: pids_running(sleep), timeout=30, logs=node.log)
        match = re.search(r"group worker starting: pid (\d+)", node.log())
        assert match, node.log()
        worker_pid = int(match.group(1))
        assert _alive(worker_pid)

        os.kill(node.pid, signal.SIGKILL)

        wait_for("the worker to exit", lambda: not _alive(worker_pid), timeout=10, logs=node.log)
        wait_for("the build's sleep to be killed", lambda: not pids_running(sleep), timeout=10, logs=node.log)
        assert "the node that started this worker is gone" in node.log()
    finally:
        shutil.rmtree(worker_work_dir(str(data_dir)), ignore_errors=True)
