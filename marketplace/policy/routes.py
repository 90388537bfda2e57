"""HTTP routes of usage policies: ``/api/v1/policies``."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict

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
    def evaluate(self, data: JSONBody[EvaluateRequest]) -> Evaluation:
        """Decide a request against a policy: allow or deny, the reason for each constraint,
        the duties that come with access, and the policy in plain sentences.

        A bad policy or context is a 400 whose ``errors`` carry the field paths
        (``policy.permissions.0.constraints.1.operator``, ``context.participant``).
        """
        return evaluate_policy(data.policy, data.context)


api_handlers = [PolicyController]
public_handlers: list[object] = []
