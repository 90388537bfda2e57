"""The bounds documents from outside are held to before anything parses them (no servers).

``kernel.limits`` scans JSON and YAML without recursion; the identity token, the JSON-RPC handler,
the token reader, the bundle lister and the error rebuilder each refuse their hostile
input with the reason instead of crashing.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import tarfile
from typing import Any

import pytest

from kernel.errors import InvalidInput, from_problem
from kernel.limits import (
    JSON,
    RECURSION_LIMIT,
    JsonLimits,
    YamlLimits,
    bound_recursion,
    check_json,
    check_yaml,
    loads,
)
from tests import services

DEEP = 100_000

REFUSED_JSON = {
    "nested arrays": (b"[" * DEEP + b"]" * DEEP, "nests deeper than 64"),
    "nested objects": (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "nests deeper than 64"),
    "unclosed nesting": (b"[" * DEEP, "nests deeper than 64"),
    "huge exponent": (b'{"a": 1e999999}', "1e999999 is out of range"),
    "negative huge exponent": (b"[-1.5E+400]", "out of range"),
    "long integer": (b"[" + b"9" * DEEP + b"]", "more than 100 characters"),
    "NaN": (b'{"a": NaN}', "NaN is not a JSON number"),
    "Infinity": (b"[-Infinity]", "-Infinity is not a JSON number"),
    "invalid UTF-8": (b'{"a": "\xff"}', "not UTF-8 (byte 7)"),
    "UTF-16": ('{"a": 1}'.encode("utf-16-le"), "NUL byte"),
    "lone surrogate": (b'["\\udc00"]', "unpaired UTF-16 surrogate"),
    "NUL character": (b'{"\\u0000": 1}', "U+0000"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_JSON))
def test_hostile_json_is_refused_with_the_bound(name: str) -> None:
    raw, reason = REFUSED_JSON[name]
    with pytest.raises(InvalidInput) as refused:  # by the scan's own bound, before any parser
        check_json(raw)
    assert reason in refused.value.detail


def test_sizes_are_bounded_as_configured() -> None:
    with pytest.raises(InvalidInput, match="longer than 10 bytes"):
        check_json(b'["' + b"x" * 11 + b'"]', JsonLimits(max_string=10))
    with pytest.raises(InvalidInput, match="longer than 10 bytes"):
        check_json(b'["' + b"x" * 20, JsonLimits(max_string=10))  # unterminated
    with pytest.raises(InvalidInput, match="more than 5 tokens"):
        check_json(b"[1, 2, 3, 4, 5]", JsonLimits(max_tokens=5))
    check_json(b"[[[1]]]", JsonLimits(max_depth=3))
    with pytest.raises(InvalidInput, match="deeper than 3"):
        check_json(b"[[[[1]]]]", JsonLimits(max_depth=3))


def test_ordinary_json_passes_and_parses_the_same() -> None:
    document = {
        "text": 'brackets [[{{ and "quotes" \\ inside strings do not count',
        "emoji": "\U0001f600 é",
        "numbers": [0, -1, 2.5, -3e10, 1e-400, 10**77, 1.7976931348623157e308],
        "nested": [[[[{"a": None, "b": True, "c": False}]]]],
    }
    raw = json.dumps(document).encode()
    check_json(raw)
    assert loads(raw) == json.loads(raw)
    assert loads(json.dumps(document, ensure_ascii=False)) == json.loads(raw)
    check_json(b'{"a": "' + b"x" * (JSON.max_string - 10) + b'"}')
    assert loads(b'["\\ud83d\\ude00"]') == ["\U0001f600"]  # a surrogate pair is a character


def test_malformed_json_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="is not JSON"):
        loads(b'{"a": [1, 2')


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_yaml_that_expands_through_aliases_is_refused_before_composing() -> None:
    with pytest.raises(InvalidInput, match="expands to more than 50000 nodes"):
        check_yaml(LAUGHS)  # counted on the event stream: nothing was composed
    check_yaml("base: &p {template: provide-access}\none: *p\ntwo: *p\n")  # ordinary reuse passes


def test_yaml_depth_and_aliases_are_bounded() -> None:
    with pytest.raises(InvalidInput, match="deeper than 64"):
        check_yaml("[" * DEEP)
    block = "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n"
    with pytest.raises(InvalidInput, match="deeper than 64"):
        check_yaml(block)
    aliases = "a: &a 1\nb: [" + ", ".join(["*a"] * 11) + "]\n"
    with pytest.raises(InvalidInput, match="more than 10 YAML aliases"):
        check_yaml(aliases, YamlLimits(max_aliases=10))


def test_documents_refuse_values_json_cannot_hold_with_their_line() -> None:
    from kernel.documents import parse_located

    with pytest.raises(InvalidInput, match=r"m.yaml:3: \.inf is not a finite number"):
        parse_located("a: 1\nb: 2\nc: .inf\n", "m.yaml", "manifest")
    with pytest.raises(InvalidInput, match=r"m.yaml:2: .*4300 digits"):
        parse_located("a: 1\nb: " + "9" * 5000 + "\n", "m.yaml", "manifest")
    with pytest.raises(InvalidInput, match=r"m\.yaml is refused: it expands"):
        parse_located(LAUGHS, "m.yaml", "manifest")
    located = parse_located("p: &p {x: 1}\nq: *p\nwhen: 2026-01-01\n", "m.yaml", "manifest")
    assert located.data["q"] == {"x": 1} and str(located.data["when"]) == "2026-01-01"


def test_validation_holds_json_text_to_the_bounds_and_names_the_field() -> None:
    from pydantic import BaseModel

    from kernel.validation import validate

    class Metadata(BaseModel):
        title: str

    with pytest.raises(InvalidInput) as refused:
        validate(Metadata, b'{"title": ' + b"[" * DEEP + b"}", prefix="metadata", what="metadata")
    assert refused.value.errors[0].path == "metadata"
    assert "nests deeper" in refused.value.detail


def test_the_recursion_limit_is_put_back_for_the_evm_and_never_raised() -> None:
    before = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(100_000)  # what py_ecc sets on import
        bound_recursion()
        assert sys.getrecursionlimit() == RECURSION_LIMIT
        sys.setrecursionlimit(2000)
        bound_recursion()
        assert sys.getrecursionlimit() == 2000
        with pytest.raises(RecursionError):  # a recursive parser now fails; it does not crash
            json.loads("[" * DEEP + "]" * DEEP)
    finally:
        sys.setrecursionlimit(before)


def test_an_identity_token_is_checked_cheaply_before_its_signature() -> None:
    """The form of a token (its size, its shape, who it names) is checked before any key is
    looked up; then the signature, and only then what the claims say."""
    from eth_account import Account

    from connector.dsp.id_tokens import TokenRejected, read_token, sign, verify_token
    from connector.dsp.identity import read_did_document
    from tests import dsp_peer

    me = dsp_peer.identity("http://127.0.0.1:8001", Account.create().key)
    key = read_did_document(me.did, me.document()).keys[me.kid]
    audience = "did:web:127.0.0.1%3A8002"
    with pytest.raises(TokenRejected, match="does not hold a compact JWT"):
        read_token("Bearer " + "a" * 10_000 + ".b.c")
    with pytest.raises(TokenRejected, match="cannot be read"):
        read_token("Bearer e30.not-base64!.x")
    with pytest.raises(TokenRejected, match="names its sender in the Authorization header"):
        read_token(None)
    other = dsp_peer.identity("http://127.0.0.1:8003", Account.create().key)
    with pytest.raises(TokenRejected, match="iss and sub are the sender's DID"):
        read_token(sign({"iss": me.did, "sub": other.did}, other._key, me.kid))
    with pytest.raises(TokenRejected, match="kid must name a key of its issuer's DID"):
        read_token(sign({"iss": me.did, "sub": me.did}, other._key, other.kid))
    forged = read_token(sign({"iss": me.did, "sub": me.did, "aud": audience}, other._key, me.kid))
    with pytest.raises(TokenRejected, match="is not signed by"):
        verify_token(forged, key, audience=audience, body=None)
    no_expiry = read_token(me.token(audience, exp=True))
    with pytest.raises(TokenRejected, match="has no expiry"):
        verify_token(no_expiry, key, audience=audience, body=None)
    too_long = read_token(me.token(audience, exp=2**62))
    with pytest.raises(TokenRejected, match="at most 3600 s are accepted"):
        verify_token(too_long, key, audience=audience, body=None)
    bound = read_token(me.token(audience, b"{}"))
    with pytest.raises(TokenRejected, match="not the one the token was signed for"):
        verify_token(bound, key, audience=audience, body=b"{ }")
    assert verify_token(bound, key, audience=audience, body=b"{}")["iss"] == me.did


def test_json_rpc_refuses_big_batches_and_odd_methods() -> None:
    from contracts import rpc

    chain = None  # never reached: every request here is refused before the chain is asked
    big = rpc.handle(
        chain, [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(101)], read_only=True
    )  # type: ignore[arg-type]
    assert big["error"]["code"] == -32600
    odd = rpc.handle(
        chain, [{"id": 1, "method": ["eth_chainId"]}, {"id": 2, "method": {}}, 7], read_only=True
    )  # type: ignore[arg-type]
    assert [answer["error"]["code"] for answer in odd] == [-32601, -32601, -32600]
    assert rpc.handle(chain, [], read_only=True)["error"]["code"] == -32600  # type: ignore[arg-type]


def test_tokens_are_bounded_before_they_are_parsed() -> None:
    from kernel.errors import Unauthorized
    from node.auth import _unverified_issuer

    def segment(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    with pytest.raises(Unauthorized, match="longer than 16384"):
        _unverified_issuer("a" * 20_000 + ".b.c")
    deep = segment(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(Unauthorized, match="nests deeper"):
        _unverified_issuer(f"{deep}.{segment(b'{}')}.sig")
    with pytest.raises(Unauthorized, match="nests deeper"):
        _unverified_issuer(f"{segment(b'{}')}.{deep}.sig")
    good = f"{segment(b'{}')}.{segment(json.dumps({'iss': 'https://idp'}).encode())}.sig"
    assert _unverified_issuer(good) == "https://idp"


def test_a_bundle_of_many_members_is_refused() -> None:
    from training_jobs.bundle import MAX_MEMBERS, BundleRejected, list_members

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(MAX_MEMBERS + 1):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    with pytest.raises(BundleRejected, match=f"more than {MAX_MEMBERS} members"):
        list_members(buffer.getvalue())


def test_an_integer_field_of_a_protocol_message_refuses_infinity() -> None:
    from training_jobs.provider import int_param

    with pytest.raises(InvalidInput, match="expected an integer"):
        int_param(float("inf"))
    assert int_param("12") == 12


def test_a_peers_refusal_keeps_its_type_and_status() -> None:
    from connector.agreements import UseDenied
    from connector.dsp.gate import ReplayedMessage

    denied = from_problem(
        {"type": "https://agora.dev/problems/use-denied", "detail": "all 2 uses are spent"}, 403
    )
    assert isinstance(denied, UseDenied) and (denied.status, denied.detail) == (403, "all 2 uses are spent")
    replayed = from_problem({"type": "https://agora.dev/problems/replayed-message"}, 409)
    assert isinstance(replayed, ReplayedMessage) and replayed.status == 409
    assert from_problem({"type": "https://agora.dev/problems/made-up"}, 418).status == 500


class _DeepPeer:
    """A peer on loopback whose every answer is ``body`` with status ``status`` (by default a
    document nesting 100,000 levels deep)."""

    def __init__(
        self, status: int, body: bytes | None = None, content_type: str = "application/json"
    ) -> None:
        from http.server import BaseHTTPRequestHandler

        deep = body if body is not None else b'{"type": ' + b"[" * DEEP + b"]" * DEEP + b"}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(deep)))
                self.end_headers()
                self.wfile.write(deep)

        self.server = services.LoopbackHTTP(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.server.stop()


def _client_of(peer: _DeepPeer) -> Any:
    from eth_account import Account

    from connector.dsp.client import PeerClient
    from connector.dsp.identity import did_for_url
    from kernel.addresses import AddressRules
    from kernel.outbound import OutboundClient, OutboundPolicy
    from tests import dsp_peer

    outbound = OutboundClient(OutboundPolicy(rules=AddressRules(allow_loopback=True)))
    me = dsp_peer.identity("http://127.0.0.1:8001", Account.create().key)
    return PeerClient(peer.url + "/dsp", outbound=outbound, identity=me, peer_did=did_for_url(peer.url))


@pytest.mark.parametrize("status", [200, 403])
def test_a_peers_deeply_nested_reply_is_refused_not_parsed(status: int) -> None:
    from kernel.errors import AgoraError

    peer = _DeepPeer(status)
    client = _client_of(peer)
    try:
        with pytest.raises(AgoraError) as refused:  # not a RecursionError, not a crash
            client.post("/catalog/request", {"@type": "CatalogRequestMessage"})
        assert refused.value.status < 500 or "refused" in refused.value.detail
        if status == 200:
            assert "nests deeper" in refused.value.detail
    finally:
        peer.close()


def _dsp_error(code: str) -> dict[str, Any]:
    return {"@type": "CatalogError", "code": code, "reason": ["d" * 10_000, "e" * 10_000]}


@pytest.mark.parametrize(
    ("status", "document"),
    [
        (400, {"type": "https://evil.example/made-up", "title": "t", "status": 400, "detail": "d" * 10_000}),
        (
            500,
            {"type": "https://agora.dev/problems/error", "title": "t", "status": 500, "detail": "d" * 10_000},
        ),
        (500, {"type": "x", "title": "t", "status": 500, "detail": "d" * 10_000}),
        (400, _dsp_error("made-up")),  # a DSP error message whose code no error class has
    ],
)
def test_a_peers_unknown_or_internal_error_is_a_502_of_this_node(
    status: int, document: dict[str, Any]
) -> None:
    """What another node says went wrong on its side never becomes a 5xx of this node's own."""
    from kernel.errors import PeerError

    media = "application/json" if "code" in document else "application/problem+json"
    peer = _DeepPeer(status, json.dumps(document).encode(), media)
    try:
        with pytest.raises(PeerError) as refused:
            _client_of(peer).post("/catalog/request", {"@type": "CatalogRequestMessage"})
        assert refused.value.status == 502 and peer.url in refused.value.detail
        assert len(refused.value.detail) < 700, "a peer's words are bounded"
    finally:
        peer.close()
