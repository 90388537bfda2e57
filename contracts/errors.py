"""Errors of the chain boundary; web3 and transport exceptions are translated here.

::

    ServiceUnavailable
    └── ChainUnavailable       the node cannot reach the chain (retried by the outbox)
    Conflict
    └── ChainReverted          the registry refused the call; ``reason`` names its custom error
    ConfigurationError
    ├── RegistryMissing        the configured address holds no Agora registry
    └── WrongChain             the chain id is not the one expected
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kernel.errors import ConfigurationError, Conflict, ServiceUnavailable


class ChainUnavailable(ServiceUnavailable):
    type_slug = "chain-unavailable"
    title = "Chain unavailable"


class ChainReverted(Conflict):
    type_slug = "chain-reverted"
    title = "The registry refused the transaction"

    def __init__(self, reason: str, args: tuple[Any, ...] = ()) -> None:
        super().__init__(f"the registry refused: {reason}{_fmt(args)}")
        self.reason = reason
        self.reason_args = args


class RegistryMissing(ConfigurationError):
    type_slug = "registry-missing"
    title = "No Agora registry at that address"


class WrongChain(ConfigurationError):
    type_slug = "wrong-chain"
    title = "Unexpected chain"


def _fmt(args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    return "(" + ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args) + ")"


@contextmanager
def map_chain_errors(decoder: Any = None) -> Iterator[None]:
    """Translate web3/transport exceptions raised inside the block into the tree above."""
    import requests
    from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3RPCError

    try:
        yield
    except (ContractCustomError, ContractLogicError) as exc:
        data = exc.data if isinstance(exc.data, str) and exc.data.startswith("0x") else None
        raise _reverted(data, str(exc.message or exc), decoder) from exc
    except (requests.RequestException, ConnectionError, TimeoutError, TimeExhausted) as exc:
        raise ChainUnavailable(f"chain unreachable: {exc}") from exc
    except Web3RPCError as exc:
        raise ChainUnavailable(f"chain error: {exc}") from exc
    except Exception as exc:
        raw = _tester_revert_data(exc)
        if raw is None:
            raise
        raise _reverted("0x" + raw.hex(), raw.decode("utf-8", "replace"), decoder) from exc


def _reverted(data: str | None, message: str, decoder: Any) -> ChainReverted:
    if decoder is not None and data and len(data) >= 10:
        name, args = decoder(data)
        return ChainReverted(name, args)
    return ChainReverted(message or "reverted without a reason")


def _tester_revert_data(exc: Exception) -> bytes | None:
    """The revert data eth-tester (the embedded chain) attaches to ``TransactionFailed``.

    It arrives as raw bytes, or as the text ``execution reverted: b'…'``.
    """
    import ast

    if type(exc).__name__ != "TransactionFailed" or not exc.args:
        return None
    data = exc.args[0]
    if isinstance(data, bytes):
        return data
    text = str(data).removeprefix("execution reverted: ")
    if text.startswith(("b'", 'b"')):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text.encode()
        return value if isinstance(value, bytes) else text.encode()
    return text.encode()
