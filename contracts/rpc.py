"""Serve the embedded chain over Ethereum JSON-RPC.

Two uses: a node on the embedded chain serves it read-only at ``/chain/rpc`` so anyone can
run ``agora verify`` against it with a stock web3 client, and ``agora devchain`` serves one
embedded chain read-write on loopback so several nodes on one machine share it.

eth-tester speaks Python (snake_case keys, ints, bytes); the wire speaks camelCase keys and
hex quantities. This module converts in both directions for the methods listed below.
"""

from __future__ import annotations

import re
from typing import Any

from contracts.chain import DEV_FUNDING_WEI, EmbeddedChain
from contracts.errors import _tester_revert_data

READ_METHODS = {
    "eth_chainId",
    "net_version",
    "web3_clientVersion",
    "eth_blockNumber",
    "eth_call",
    "eth_getCode",
    "eth_getTransactionReceipt",
    "eth_getTransactionByHash",
    "eth_getBlockByNumber",
    "eth_getLogs",
    "eth_getBalance",
    "eth_getTransactionCount",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_estimateGas",
    "eth_feeHistory",
}
WRITE_METHODS = {"eth_sendRawTransaction", "anvil_setBalance"}
MAX_BATCH = 100  # each request may run the EVM: a batch is bounded like any other work
_QUANTITY_KEYS = {
    "gas",
    "gasPrice",
    "value",
    "nonce",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
    "fromBlock",
    "toBlock",
}
_CAMEL = re.compile(r"_([a-z])")
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_HEX_STRING_KEYS = {"type"}


def _camel(key: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), key)


def _snake(key: str) -> str:
    return _SNAKE.sub("_", key).lower()


def _to_wire(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {
            _camel(k): (v if k in _HEX_STRING_KEYS and isinstance(v, str) else _to_wire(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    return value


def _block(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    return value


def _object_in(value: dict[str, Any]) -> dict[str, Any]:
    """A transaction or filter object from the wire, in eth-tester's form."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _QUANTITY_KEYS and isinstance(item, str) and item.startswith("0x"):
            item = int(item, 16)
        out[_snake(key)] = item
    if "input" in out and "data" not in out:
        out["data"] = out.pop("input")
    return out


def _params_in(chain: EmbeddedChain, method: str, params: list[Any]) -> list[Any]:
    if method in ("eth_call", "eth_estimateGas") and params:
        tx = _object_in(params[0])
        tx.setdefault("from", chain.w3.eth.default_account)  # eth-tester needs a (funded) sender
        return [tx, *[_block(p) for p in params[1:]]]
    if method == "eth_getLogs" and params:
        return [_object_in(params[0])]
    if method in ("eth_getBlockByNumber",) and params:
        return [_block(params[0]), *params[1:]]
    if method in ("eth_getCode", "eth_getBalance", "eth_getTransactionCount") and len(params) > 1:
        return [params[0], _block(params[1])]
    return params


def handle(chain: EmbeddedChain, request: Any, *, read_only: bool) -> Any:
    """Answer one JSON-RPC request object, or a batch (list) of at most
    :data:`MAX_BATCH` of them."""
    if isinstance(request, list):
        if not request or len(request) > MAX_BATCH:
            return _error(None, -32600, f"a batch holds 1 to {MAX_BATCH} requests")
        return [_one(chain, item, read_only=read_only) for item in request]
    return _one(chain, request, read_only=read_only)


def _one(chain: EmbeddedChain, request: Any, *, read_only: bool) -> Any:
    if not isinstance(request, dict):
        return _error(None, -32600, "invalid request")
    rid = request.get("id")
    method = request.get("method")
    params = request.get("params") or []
    allowed = READ_METHODS if read_only else READ_METHODS | WRITE_METHODS
    if not isinstance(method, str):
        return _error(rid, -32601, "the method must be a string")
    if method not in allowed:
        reason = "this endpoint is read-only" if method in WRITE_METHODS else "method not supported"
        return _error(rid, -32601, f"{method}: {reason}")
    try:
        result = _dispatch(chain, method, list(params))
    except Exception as exc:  # every failure becomes a JSON-RPC error, never a 500
        raw = _tester_revert_data(exc)
        if raw is not None:
            return _error(rid, 3, "execution reverted", "0x" + raw.hex())
        return _error(rid, -32000, str(exc) or type(exc).__name__)
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def _dispatch(chain: EmbeddedChain, method: str, params: list[Any]) -> Any:
    if method == "net_version":
        return str(chain.chain_id)
    if method == "web3_clientVersion":
        return "agora-embedded/py-evm"
    if method == "eth_chainId":
        return hex(chain.chain_id)
    if method in ("eth_gasPrice", "eth_maxPriorityFeePerGas"):
        return hex(0)
    if method == "anvil_setBalance":
        chain.fund(params[0], minimum=min(int(params[1], 16), DEV_FUNDING_WEI))
        return True
    response = chain.w3.provider.make_request(method, _params_in(chain, method, params))
    if "error" in response:
        error = response["error"]
        raise RuntimeError(error.get("message") if isinstance(error, dict) else str(error))
    return _to_wire(response.get("result"))


def _error(rid: Any, code: int, message: str, data: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": error}
