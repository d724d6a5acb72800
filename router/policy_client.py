"""The router's view of the policy service: register a program's policy, ask for a decision, send
feedback, delete. Over HTTP (``HttpPolicyClient``); any failure is ``PolicyUnavailable``, which the
router answers with its fallback decision (deciding) or its outbox (feedback, registration)."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from router.errors import RouterError
from router.programs import policy_spec
from router.schemas import ProgramPublic


class PolicyUnavailable(RouterError):
    """The policy service could not be reached or failed (a retry may succeed)."""


class PolicyRejected(PolicyUnavailable):
    """The policy service refused the request (4xx): retrying the same message cannot succeed."""


class PolicyPort(Protocol):
    def register(self, program: ProgramPublic) -> None: ...
    def decide(self, program_id: str, decision_id: str, image_b64: str) -> dict[str, str]: ...
    def feedback(self, program_id: str, message: dict[str, Any]) -> None: ...
    def delete(self, program_id: str) -> None: ...


class HttpPolicyClient:
    """Calls the policy service at ``base_url`` (``/policies/{program_id}`` routes)."""

    def __init__(self, base_url: str, *, timeout_s: float = 2.0, client: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, f"{self.base_url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"policy service unreachable at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            error = PolicyRejected if response.status_code < 500 else PolicyUnavailable
            raise error(f"policy service: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def register(self, program: ProgramPublic) -> None:
        self._call("PUT", f"/policies/{program.id}", policy_spec(program))

    def decide(self, program_id: str, decision_id: str, image_b64: str) -> dict[str, str]:
        body = {"decision_id": decision_id, "image": image_b64}
        reply = self._call("POST", f"/policies/{program_id}/decisions", body)
        backends = reply.get("backends") if isinstance(reply, dict) else None
        if not isinstance(backends, dict):
            raise PolicyUnavailable(f"policy service returned no backends: {reply!r}")
        return {str(k): str(v) for k, v in backends.items()}

    def feedback(self, program_id: str, message: dict[str, Any]) -> None:
        self._call("POST", f"/policies/{program_id}/feedback", message)

    def delete(self, program_id: str) -> None:
        self._call("DELETE", f"/policies/{program_id}")

    def ready(self) -> bool:
        try:
            return self._client.get(f"{self.base_url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()
