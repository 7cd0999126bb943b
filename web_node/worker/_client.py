"""The worker's side of the gateway's HTTP endpoints (see :mod:`web_node.members.gateway`).

Registration presents the shared worker token; the gateway answers a new
worker with a credential of its own, which every later call presents and
which :class:`GatewayClient` keeps in ``credential_file`` (mode 0600, written
atomically) so that the worker, restarted, registers again under its name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import httpx

from web_node.errors import ConfigError, WebNodeError

REQUEST_TIMEOUT_S = 15.0
# In the worker's work dir: the credential the gateway gave this worker.
CREDENTIAL_FILE = "worker-credential"


class GatewayError(WebNodeError):
    """The gateway could not be reached or answered 5xx: worth retrying."""


class GatewayRefused(WebNodeError):
    """The gateway answered 4xx: retrying the same request will not help.

    ``status`` is the HTTP code; ``message`` the gateway's ``error`` text.
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ClaimedStep:
    run: str


@dataclass(frozen=True)
class ClaimedBuild:
    id: int
    pipeline: str
    job: str
    timeout_s: float
    steps: tuple[ClaimedStep, ...]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClaimedBuild:
        return cls(id=int(doc["id"]), pipeline=str(doc["pipeline"]), job=str(doc["job"]),
                   timeout_s=float(doc.get("timeout_s") or 600.0),
                   steps=tuple(ClaimedStep(str(s["run"])) for s in doc.get("steps", [])))

    @property
    def label(self) -> str:
        return f"build {self.id} of {self.pipeline}/{self.job}"


@dataclass(frozen=True)
class EventsAnswer:
    accepted: int
    status: str
    abort: bool
    duplicate: bool = False  # the gateway had stored this batch already (its answer was lost)


def read_credential(path: str) -> str | None:
    """The credential kept in ``path``; None when there is none yet. Refuses a file others may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the worker credential {path}: {e.strerror}; fix its permissions or delete it "
                          "(the worker then registers anew, under a name no other worker holds)", key="--work-dir",
                          value=path) from None
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if info.st_mode & 0o077 or info.st_uid != os.geteuid():
            raise ConfigError(f"the worker credential {path} may be read by others (mode {info.st_mode & 0o777:o}, "
                              f"owner uid {info.st_uid}): it must be this user's, mode 0600; fix it with chmod 600, "
                              "or delete it and register anew", key="--work-dir", value=path)
        return f.read().strip() or None


def write_credential(path: str, credential: str) -> None:
    """Keep the credential in ``path``, mode 0600 from the start; a crash leaves the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".worker-credential.", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(credential + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class GatewayClient:
    """One worker's calls to the gateway; every method raises GatewayError or GatewayRefused."""

    def __init__(self, base_url: str, token: str, worker: str, *, credential_file: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.worker = worker
        self.credential_file = credential_file
        self._token = token
        self._credential: str | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, headers={"User-Agent": f"web-node-worker/{worker}"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    shared_token: bool = False) -> dict[str, Any]:
        """One call; ``shared_token``: present the shared worker token (registration), else the credential."""
        bearer = self._token if shared_token else self._credential
        if bearer is None:
            raise GatewayRefused(f"worker {self.worker} has no credential yet: register first", status=401)
        try:
            response = await self._http.request(method, path, json=body, headers={"Authorization": f"Bearer {bearer}"})
        except httpx.TransportError as e:
            raise GatewayError(f"gateway {self.base_url} unreachable ({method} {path}): {e or type(e).__name__}") from e
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if response.status_code >= 500:
            raise GatewayError(f"gateway {self.base_url} failed {method} {path} with {response.status_code}: "
                               f"{doc.get('error') or response.text[:200]}")
        if response.status_code == 401 and not shared_token:
            # The credential is not (any more) known there: pruned after missing heartbeats. Register again.
            raise GatewayRefused(f"gateway {self.base_url} refused this worker's credential ({method} {path}): "
                                 f"{doc.get('error', '401')}", status=401)
        if response.status_code == 401:
            raise ConfigError(f"gateway {self.base_url} refused the worker token ({doc.get('error', '401')}); pass the "
                              "gateway's worker_token (data_dir/worker-token there) with --token-file or "
                              "WEB_NODE_WORKER_TOKEN", key="--token")
        if response.status_code >= 400:
            raise GatewayRefused(f"gateway {self.base_url} refused {method} {path} with {response.status_code}: "
                                 f"{doc.get('error') or response.text[:200]}", status=response.status_code)
        return doc

    async def info(self) -> dict[str, Any]:
        return await self._call("GET", "/gateway/v1/info", shared_token=True)

    async def register(self, platform: str, tags: list[str], builds: list[int]) -> float:
        """Register, presenting the kept credential if there is one; keep a new one the gateway hands out.

        Returns the heartbeat interval the gateway asks for. GatewayRefused
        with status 409: another worker holds this name.
        """
        if self._credential is None and self.credential_file is not None:
            self._credential = read_credential(self.credential_file)
        body: dict[str, Any] = {"name": self.worker, "platform": platform, "tags": tags, "builds": builds}
        if self._credential is not None:
            body["credential"] = self._credential
        doc = await self._call("POST", "/gateway/v1/workers", body, shared_token=True)
        issued = doc.get("credential")
        if isinstance(issued, str) and issued:
            self._credential = issued
            if self.credential_file is not None:
                write_credential(self.credential_file, issued)
        return float(doc.get("heartbeat_interval_s") or 5.0)

    async def heartbeat(self, builds: list[int]) -> tuple[dict[int, str], float]:
        """Returns the builds to stop (id -> their status on the server) and the heartbeat interval.

        GatewayRefused with status 401 or 404 means: this worker is not registered (any more), register again.
        """
        doc = await self._call("PUT", f"/gateway/v1/workers/{self.worker}/heartbeat",
                               {"active_builds": len(builds), "builds": builds})
        stop = {int(item["id"]): str(item.get("status", "")) for item in doc.get("abort", [])}
        return stop, float(doc.get("heartbeat_interval_s") or 5.0)

    async def claim(self, active_builds: int) -> ClaimedBuild | None:
        doc = await self._call("POST", f"/gateway/v1/workers/{self.worker}/claim", {"active_builds": active_builds})
        build = doc.get("build")
        return ClaimedBuild.from_json(build) if build else None

    async def send_events(self, build_id: int, events: list[dict[str, Any]], seq: int) -> EventsAnswer:
        """Send the build's batch number ``seq``; re-send a batch whose answer was lost with the same number
        and the same events: the gateway stores each number once."""
        doc = await self._call("POST", f"/gateway/v1/builds/{build_id}/events",
                               {"worker": self.worker, "seq": seq, "events": events})
        return EventsAnswer(int(doc.get("accepted", 0)), str(doc.get("status", "")), bool(doc.get("abort")),
                            bool(doc.get("duplicate")))

    async def finish(self, build_id: int, status: str, message: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"worker": self.worker, "status": status}
        if message:
            body["message"] = message
        return await self._call("PUT", f"/gateway/v1/builds/{build_id}/finish", body)
