"""The worker's side of the gateway's HTTP endpoints (see :mod:`web_node.members.gateway`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from web_node.errors import ConfigError, WebNodeError

REQUEST_TIMEOUT_S = 15.0


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


class GatewayClient:
    """One worker's calls to the gateway; every method raises GatewayError or GatewayRefused."""

    def __init__(self, base_url: str, token: str, worker: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.worker = worker
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"web-node-worker/{worker}"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, json=body)
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
        if response.status_code == 401:
            raise ConfigError(f"gateway {self.base_url} refused the worker token ({doc.get('error', '401')}); pass the "
                              "gateway's worker_token (data_dir/worker-token there) with --token-file or "
                              "WEB_NODE_WORKER_TOKEN", key="--token")
        if response.status_code >= 400:
            raise GatewayRefused(f"gateway {self.base_url} refused {method} {path} with {response.status_code}: "
                                 f"{doc.get('error') or response.text[:200]}", status=response.status_code)
        return doc

    async def info(self) -> dict[str, Any]:
        return await self._call("GET", "/gateway/v1/info")

    async def register(self, platform: str, tags: list[str], builds: list[int]) -> float:
        """Register; returns the heartbeat interval the gateway asks for."""
        doc = await self._call("POST", "/gateway/v1/workers",
                               {"name": self.worker, "platform": platform, "tags": tags, "builds": builds})
        return float(doc.get("heartbeat_interval_s") or 5.0)

    async def heartbeat(self, builds: list[int]) -> tuple[dict[int, str], float]:
        """Returns the builds to stop (id -> their status on the server) and the heartbeat interval.

        GatewayRefused with status 404 means: this worker is not registered (any more), register again.
        """
        doc = await self._call("PUT", f"/gateway/v1/workers/{self.worker}/heartbeat",
                               {"active_builds": len(builds), "builds": builds})
        stop = {int(item["id"]): str(item.get("status", "")) for item in doc.get("abort", [])}
        return stop, float(doc.get("heartbeat_interval_s") or 5.0)

    async def claim(self, active_builds: int) -> ClaimedBuild | None:
        doc = await self._call("POST", f"/gateway/v1/workers/{self.worker}/claim", {"active_builds": active_builds})
        build = doc.get("build")
        return ClaimedBuild.from_json(build) if build else None

    async def send_events(self, build_id: int, events: list[dict[str, Any]]) -> EventsAnswer:
        doc = await self._call("POST", f"/gateway/v1/builds/{build_id}/events", {"worker": self.worker, "events": events})
        return EventsAnswer(int(doc.get("accepted", 0)), str(doc.get("status", "")), bool(doc.get("abort")))

    async def finish(self, build_id: int, status: str, message: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"worker": self.worker, "status": status}
        if message:
            body["message"] = message
        return await self._call("PUT", f"/gateway/v1/builds/{build_id}/finish", body)
