"""HTTP routes of usage policies: ``/api/v1/policies``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, post
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict

from kernel.validation import validate
from marketplace.policy.engine import Evaluation, RequestContext, evaluate_policy
from marketplace.policy.language import Policy

MAX_JSON_BYTES = 256 * 1024


class EvaluateRequest(BaseModel):
    """A policy (template or explicit rules) and the request to decide against it."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy
    context: RequestContext


class PolicyController(Controller):
    path = "/policies"
    tags = ["policies"]

    @post(
        "/evaluate",
        opt={"scope": "catalog:read"},
        status_code=200,
        sync_to_thread=False,
        request_max_body_size=MAX_JSON_BYTES,
    )
    def evaluate(self, data: JSONBody[dict[str, Any]]) -> Evaluation:
        """Decide a request against a policy: allow or deny, the reason for each constraint,
        the duties that come with access, and the policy in plain sentences.

        The body is ``{"policy": …, "context": …}`` (see :class:`EvaluateRequest`); it is
        validated here rather than by the framework, so errors carry the same field paths
        as everywhere else (``policy.permissions.0.constraints.1.operator``).
        """
        request = validate(EvaluateRequest, data, what="policy evaluation")
        return evaluate_policy(request.policy, request.context)


api_handlers = [PolicyController]
public_handlers: list[object] = []
