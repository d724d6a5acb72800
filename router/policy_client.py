"""The router's view of the policy service: check a policy spec, register it, ask for a decision,
send feedback (one, or several of a program in one request), delete, and whether it is ready to
decide (asked while its circuit is open, to try it again as soon as it is back). Over HTTP
(``HttpPolicyClient``), with the messages of :mod:`fmprog.contract`; any failure is
``PolicyUnavailable``, which the router answers with its fallback decision (deciding) or its
outbox (feedback, registration)."""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from fmprog.contract import (
    ExpiredDecisions,
    Feedback,
    FeedbackList,
    FeedbackListReply,
    PolicyDecision,
    PolicySpec,
    ReuseOutcome,
    ReuseReply,
    ReuseRequest,
)
from router.errors import RouterError


class PolicyUnavailable(RouterError):
    """The policy service could not be reached or failed (a retry may succeed)."""


class PolicyRejected(PolicyUnavailable):
    """The policy service refused the request (4xx other than 401, 403, 408, 429): retrying the
    same message cannot succeed.
    ``detail`` is the policy's own reason."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class PolicyPort(Protocol):
    def check(self, spec: PolicySpec) -> None: ...
    def register(self, program_id: str, spec: PolicySpec) -> None: ...
    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision: ...
    def feedback(self, program_id: str, feedback: Feedback) -> None: ...
    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply: ...
    def expire(self, program_id: str, expired: ExpiredDecisions) -> None: ...
    def delete(self, program_id: str) -> None: ...
    def reuse(self, program_id: str, request: ReuseRequest) -> ReuseReply: ...
    def reuse_outcome(self, program_id: str, outcome: ReuseOutcome) -> None: ...
    def ready(self) -> bool: ...


class HttpPolicyClient:
    """Calls the policy service at ``base_url`` (``/policies/...`` routes).

    A request for a decision carries what the program's algorithm reads of the frame
    (``fmprog.contract.frame_input``) as a raw ``octet-stream`` body, neither base64-wrapped nor
    JSON: the bytes the router received (PNG or JPEG), the PNG of the frame's thumbnail, or
    nothing (an empty body) for an algorithm that reads no pixels."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        register_timeout_s: float = 30.0,
        api_key: str | None = None,
        client: httpx.Client | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.register_timeout_s = register_timeout_s
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout_s, headers=headers)

    def _call(self, method: str, path: str, **request: Any) -> Any:
        try:
            response = self._client.request(method, f"{self.base_url}{path}", **request)
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"policy service unreachable at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            message = f"policy service: HTTP {response.status_code}: {detail}"
            if response.status_code < 500 and response.status_code not in _RETRYABLE:
                raise PolicyRejected(message, str(detail))
            raise PolicyUnavailable(message)
        return response.json() if response.content else None

    def check(self, spec: PolicySpec) -> None:
        """Whether the policy can build ``spec`` (PolicyRejected when not). Building a policy may
        load its algorithm's libraries the first time (torch), so this waits ``register_timeout_s``,
        not a decision's timeout."""
        body = spec.model_dump_json(by_alias=True)
        self._call("POST", "/policies/check", content=body, headers=_JSON, timeout=self.register_timeout_s)

    def register(self, program_id: str, spec: PolicySpec) -> None:
        """Build and keep the program's policy (waiting ``register_timeout_s``, as :meth:`check`)."""
        body = spec.model_dump_json(by_alias=True)
        self._call("PUT", f"/policies/{program_id}", content=body, headers=_JSON, timeout=self.register_timeout_s)

    def decide(self, program_id: str, decision_id: str, image: bytes | None) -> PolicyDecision:
        """The policy's decision ``decision_id`` for one frame: ``image`` is the PNG or JPEG the
        algorithm reads (the frame or its thumbnail), or ``None`` for an algorithm that reads no
        pixels (the request then has an empty body)."""
        reply = self._call(
            "POST",
            f"/policies/{program_id}/decisions",
            params={"decision_id": decision_id},
            content=image if image is not None else b"",
            headers={"content-type": "application/octet-stream"},
        )
        try:
            return PolicyDecision.model_validate(reply)
        except ValidationError as exc:
            raise PolicyUnavailable(f"policy service returned no decision: {exc}") from None

    def feedback(self, program_id: str, feedback: Feedback) -> None:
        body = feedback.model_dump_json()
        self._call("POST", f"/policies/{program_id}/feedback", content=body, headers=_JSON)

    def feedback_batch(self, program_id: str, batch: FeedbackList) -> FeedbackListReply:
        """Several feedback of a program in one request; the policy's outcome for each, in order."""
        body = batch.model_dump_json()
        reply = self._call("POST", f"/policies/{program_id}/feedback/batch", content=body, headers=_JSON)
        try:
            outcomes = FeedbackListReply.model_validate(reply)
        except ValidationError as exc:
            raise PolicyUnavailable(f"policy service returned no outcomes: {exc}") from None
        if len(outcomes.results) != len(batch.feedback):
            raise PolicyUnavailable(
                f"policy service returned {len(outcomes.results)} outcomes for {len(batch.feedback)} feedback"
            )
        return outcomes

    def expire(self, program_id: str, expired: ExpiredDecisions) -> None:
        self._call("POST", f"/policies/{program_id}/expired", content=expired.model_dump_json(), headers=_JSON)

    def delete(self, program_id: str) -> None:
        self._call("DELETE", f"/policies/{program_id}")

    def reuse(self, program_id: str, request: ReuseRequest) -> ReuseReply:
        reply = self._call("POST", f"/policies/{program_id}/reuse", content=request.model_dump_json(), headers=_JSON)
        try:
            return ReuseReply.model_validate(reply)
        except ValidationError as exc:
            raise PolicyUnavailable(f"policy service returned no reuse decision: {exc}") from None

    def reuse_outcome(self, program_id: str, outcome: ReuseOutcome) -> None:
        body = outcome.model_dump_json()
        self._call("POST", f"/policies/{program_id}/reuse/outcomes", content=body, headers=_JSON)

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether the policy service says it is ready (``GET /readyz`` answered 200 within
        ``timeout_s``); False on any failure, never an exception."""
        try:
            return self._client.get(f"{self.base_url}/readyz", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()


_JSON = {"content-type": "application/json"}
# 4xx replies that say nothing against the message itself: a wrong or missing key (the router's
# policy_api_key), a timeout, a rate limit. The message waits in the outbox until they are fixed.
_RETRYABLE = frozenset({401, 403, 408, 429})
