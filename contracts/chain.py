"""The chain boundary: one interface, two implementations chosen by ``AGORA_CHAIN_URL``.

* :class:`EmbeddedChain` (``embedded``): py-evm in this process through eth-tester, its
  state in a SQLite file in the node's home, so what was notarized survives a restart. The
  registry is deployed on first start. Fees are zero (genesis base fee 0), so the node's key
  needs no funding.
* :class:`RpcChain` (an ``http(s)://`` URL): any EVM JSON-RPC node — anvil for several nodes
  on one machine, Besu / Quorum / geth for a consortium. Transport errors are retried,
  nonces are managed locally, gas is estimated with a margin, receipts wait for the
  configured confirmations, and a wrong chain id or an address without the registry is a
  clear configuration error.

Both sign transactions locally with the organisation's key; nothing is unlocked on a node.
"""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.compile import load_artifact
from contracts.errors import ChainReverted, ChainUnavailable, RegistryMissing, WrongChain, map_chain_errors

if TYPE_CHECKING:
    from kernel.outbound import OutboundClient

REGISTRY_VERSION = "agora-registry/1"
# A well-known development key that holds the embedded chain's ether, like anvil's test
# accounts: the embedded chain and `agora devchain` are for one machine, never a consortium.
DEV_FAUCET_KEY = "0x" + "a9" * 32
DEV_FUNDING_WEI = 10**24
EMBEDDED_CHAIN_ID = 1337
GAS_MARGIN = 1.25


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    block_number: int
    gas_used: int
    logs: list[Any]


class Chain(ABC):
    """A connection to an EVM chain where the Agora registry lives."""

    kind: str = "abstract"

    def __init__(self, w3: Any, account: Any | None, confirmations: int = 1) -> None:
        self.w3 = w3
        self.account = account
        self.confirmations = max(1, confirmations)
        self._nonce: int | None = None
        self._tx_lock = threading.RLock()
        self._chain_id: int | None = None
        self.registry_address: str | None = None
        self._errors = _ErrorDecoder(load_artifact("AgoraRegistry")["abi"])

    # Reading ------------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            with self.guard():
                self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def contract(self, address: str, artifact: str = "AgoraRegistry") -> Any:
        return self.w3.eth.contract(address=address, abi=load_artifact(artifact)["abi"])

    def registry(self) -> Any:
        if not self.registry_address:
            raise RegistryMissing("no registry address configured (AGORA_CHAIN_REGISTRY)")
        return self.contract(self.registry_address)

    def call(self, fn: Any) -> Any:
        with self.guard():
            return fn.call()

    def check_registry(self, address: str) -> None:
        """Refuse an address that holds no Agora registry."""
        with self.guard():
            code = self.w3.eth.get_code(address)
        if not code:
            raise RegistryMissing(f"no contract at {address} on chain {self.chain_id}")
        try:
            version = self.call(self.contract(address).functions.VERSION())
        except Exception as exc:
            raise RegistryMissing(f"the contract at {address} is not an Agora registry ({exc})") from exc
        if version != REGISTRY_VERSION:
            raise RegistryMissing(f"the contract at {address} is {version!r}, expected {REGISTRY_VERSION!r}")

    def guard(self) -> Any:
        """Context manager translating web3 errors (reverts decoded from the registry's ABI)."""
        return map_chain_errors(self._errors.decode)

    # Writing ------------------------------------------------------------------------

    @property
    def sender(self) -> str:
        if self.account is None:
            raise RegistryMissing("this chain connection is read-only (no signing key)")
        return str(self.account.address)

    def transact(self, fn: Any, gas: int | None = None) -> TxResult:
        """Check (a call, or a gas estimate when no limit is given), sign with the org key, send,
        and wait for the receipt. A refusal surfaces here with the registry's reason."""
        with self._tx_lock:
            with self.guard():
                fees = self._fees()
                if gas is None:
                    gas = int(fn.estimate_gas({"from": self.sender, **fees}) * GAS_MARGIN) + 10_000
                else:
                    # one execution instead of an estimate's binary search; a revert still shows
                    fn.call({"from": self.sender, **fees})
                tx = fn.build_transaction({"from": self.sender, "gas": gas, **fees})
            return self._send(tx)

    def deploy(self, artifact_name: str, *args: Any) -> tuple[str, TxResult]:
        artifact = load_artifact(artifact_name)
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        with self._tx_lock:
            with self.guard():
                ctor = factory.constructor(*args)
                fees = self._fees()
                estimate = int(ctor.estimate_gas({"from": self.sender, **fees}) * GAS_MARGIN) + 10_000
                tx = ctor.build_transaction({"from": self.sender, "gas": estimate, **fees})
            result = self._send(tx)
            with self.guard():
                receipt = self.w3.eth.get_transaction_receipt(result.tx_hash)
        return str(receipt["contractAddress"]), result

    def _fees(self) -> dict[str, int]:
        latest = self.w3.eth.get_block("latest")
        base = latest.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": int(self.w3.eth.gas_price)}
        try:
            tip = int(self.w3.eth.max_priority_fee) if base else 0
        except Exception:
            tip = 0
        return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}

    def _send(self, tx: dict[str, Any]) -> TxResult:
        tx["chainId"] = self.chain_id
        with self.guard():
            if self._nonce is None:
                self._nonce = int(self.w3.eth.get_transaction_count(self.sender, "pending"))
            tx["nonce"] = self._nonce
            signed = self.account.sign_transaction(tx)  # type: ignore[union-attr]  # sender checked it
        try:
            with self.guard():
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except ChainUnavailable:
            self._nonce = None  # the node may or may not have taken it: resync before the next try
            raise
        self._nonce += 1
        try:
            receipt = self._wait(tx_hash)
        except ChainUnavailable:
            self._nonce = None  # the transaction may have been dropped: never leave a nonce gap
            raise
        if receipt["status"] != 1:
            raise ChainReverted(f"transaction {tx_hash.hex()} reverted")
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x"),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            logs=list(receipt["logs"]),
        )

    def _wait(self, tx_hash: bytes) -> Any:
        with self.guard():
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.01)
        if self.confirmations > 1:
            deadline = time.monotonic() + 600
            while self.w3.eth.block_number < receipt["blockNumber"] + self.confirmations - 1:
                if time.monotonic() > deadline:
                    raise ChainUnavailable(f"no {self.confirmations} confirmations within 600 s")
                time.sleep(0.5)
        return receipt

    def as_account(self, account: Any) -> Chain:
        """The same chain connection signing with another key (own nonce counter)."""
        other = copy.copy(self)
        other.account = account
        other._nonce = None
        other._tx_lock = threading.RLock()
        return other

    @abstractmethod
    def fund(self, address: str) -> None:
        """Give an account development ether (embedded chain, anvil, ``agora devchain``)."""

    @abstractmethod
    def close(self) -> None: ...


class _ErrorDecoder:
    """Names the registry's custom errors from revert data (selector + ABI-encoded args)."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        from eth_utils.crypto import keccak

        self._errors: dict[str, tuple[str, list[str]]] = {}
        for entry in abi:
            if entry.get("type") == "error":
                types = [i["type"] for i in entry["inputs"]]
                selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4].hex()
                self._errors[selector] = (entry["name"], types)

    def decode(self, data: str) -> tuple[str, tuple[Any, ...]]:
        from eth_abi.abi import decode

        raw = data.removeprefix("0x")
        found = self._errors.get(raw[:8])
        if found is None:
            return f"unknown revert 0x{raw[:8]}", ()
        name, types = found
        try:
            return name, tuple(decode(types, bytes.fromhex(raw[8:])))
        except Exception:
            return name, ()


class EmbeddedChain(Chain):
    """py-evm in this process; state kept in ``DIR/chain.sqlite``."""

    kind = "embedded"

    def __init__(self, data_dir: Path, account: Any | None) -> None:
        from eth.db.atomic import AtomicDB
        from eth.db.chain import ChainDB
        from eth_account import Account
        from eth_tester import EthereumTester, PyEVMBackend
        from eth_tester.backends.pyevm.main import get_default_genesis_params
        from web3 import EthereumTesterProvider, Web3
        from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return

        from contracts.kvstore import SqliteKV

        self.data_dir = data_dir
        self._kv = SqliteKV(data_dir / "chain.sqlite")
        db = AtomicDB(self._kv)
        backend = PyEVMBackend()
        chain_class = type(backend.chain)
        chain_class.chain_id = EMBEDDED_CHAIN_ID
        try:
            ChainDB(db).get_canonical_head()
            backend.chain = chain_class(db)
        except Exception:
            from eth_account import Account

            faucet = Account.from_key(DEV_FAUCET_KEY)
            params = get_default_genesis_params()
            params["base_fee_per_gas"] = 0
            genesis_state = {
                bytes.fromhex(faucet.address[2:]): {"balance": 10**30, "nonce": 0, "code": b"", "storage": {}}
            }
            backend.chain = chain_class.from_genesis(db, params, genesis_state)
            self._kv.commit()
        mine = backend.mine_blocks

        def mine_and_commit(*args: Any, **kwargs: Any) -> Any:
            try:
                blocks = mine(*args, **kwargs)
            except BaseException:
                self._kv.rollback()
                raise
            self._kv.commit()
            return blocks

        backend.mine_blocks = mine_and_commit
        self.tester = EthereumTester(backend=backend, auto_mine_transactions=True)
        # web3's tester provider answers eth_chainId with a constant of its own, while the EVM
        # (block.chainid, so the registry's EIP-712 domain) uses the chain class's id: report that.
        endpoints = {
            **API_ENDPOINTS,
            "eth": {**API_ENDPOINTS["eth"], "chainId": static_return(EMBEDDED_CHAIN_ID)},
        }
        provider = EthereumTesterProvider(self.tester, api_endpoints=endpoints)
        # py-evm is not thread-safe: every request to the in-process chain takes one lock
        self.lock = threading.RLock()
        unlocked = provider.make_request

        def make_request(method: Any, params: Any) -> Any:
            with self.lock:
                return unlocked(method, params)

        provider.make_request = make_request  # type: ignore[method-assign]
        super().__init__(Web3(provider), account)
        # eth-tester prices read-only calls too: make them from the funded faucet
        self.w3.eth.default_account = Account.from_key(DEV_FAUCET_KEY).address
        if account is not None:
            self.fund(account.address)
        self.registry_address = self._ensure_registry()

    def fund(self, address: str, minimum: int = DEV_FUNDING_WEI // 10) -> None:
        """Give an account development ether from the faucet when it runs low."""
        from eth_account import Account

        with self._tx_lock, self.guard():
            if int(self.w3.eth.get_balance(address)) >= minimum:
                return
            faucet = Account.from_key(DEV_FAUCET_KEY)
            tx = {
                "to": address,
                "value": DEV_FUNDING_WEI,
                "gas": 21_000,
                "maxFeePerGas": 0,
                "maxPriorityFeePerGas": 0,
                "chainId": self.chain_id,
                "type": 2,
                "nonce": int(self.w3.eth.get_transaction_count(faucet.address, "pending")),
            }
            tx_hash = self.w3.eth.send_raw_transaction(faucet.sign_transaction(tx).raw_transaction)
            self.w3.eth.wait_for_transaction_receipt(tx_hash)

    def _ensure_registry(self) -> str | None:
        marker = self.data_dir / "registry-address"
        if marker.exists():
            address = marker.read_text().strip()
            self.check_registry(address)
            return address
        if self.account is None:
            return None
        address, _ = self.deploy("AgoraRegistry", False)
        marker.write_text(address + "\n")
        return address

    def close(self) -> None:
        self._kv.close()


class RpcChain(Chain):
    """Any EVM node over JSON-RPC."""

    kind = "jsonrpc"

    def __init__(
        self,
        url: str,
        account: Any | None,
        *,
        registry: str | None,
        expected_chain_id: int | None = None,
        confirmations: int = 1,
        timeout: float = 10.0,
        retries: int = 5,
        outbound: OutboundClient | None = None,
    ) -> None:
        """``outbound``: send every call through the node's outbound client (its address rules,
        no redirects, a response cap) — for a chain a peer's document named."""
        import requests
        from web3 import HTTPProvider, Web3
        from web3.providers.rpc.utils import ExceptionRetryConfiguration

        provider_class = HTTPProvider if outbound is None else _outbound_provider_class()
        provider = provider_class(
            url,
            request_kwargs={"timeout": timeout, "allow_redirects": False},
            exception_retry_configuration=ExceptionRetryConfiguration(
                errors=(requests.ConnectionError, requests.Timeout, requests.HTTPError),
                # web3 counts attempts, not retries: 0 attempts would send nothing at all
                retries=max(0, retries) + 1,
                backoff_factor=0.2,
                method_allowlist=[
                    "eth_chainId",
                    "eth_call",
                    "eth_getCode",
                    "eth_blockNumber",
                    "eth_getBlockByNumber",
                    "eth_getTransactionReceipt",
                    "eth_getTransactionCount",
                    "eth_estimateGas",
                    "eth_gasPrice",
                    "eth_maxPriorityFeePerGas",
                    "eth_getLogs",
                    "eth_sendRawTransaction",
                    "net_version",
                ],
            ),
        )
        if outbound is not None:
            provider.outbound = outbound  # type: ignore[union-attr]
        super().__init__(Web3(provider), account, confirmations)
        self.url = url
        if expected_chain_id is not None and self.chain_id != expected_chain_id:
            raise WrongChain(f"{url} is chain {self.chain_id}, expected {expected_chain_id}")
        if registry:
            from eth_utils.address import to_checksum_address

            self.registry_address = to_checksum_address(registry)
            self.check_registry(self.registry_address)

    def fund(self, address: str, minimum: int = DEV_FUNDING_WEI // 10) -> None:
        """Top up a development account with ``anvil_setBalance`` (anvil and ``agora devchain``)."""
        with self.guard():
            if int(self.w3.eth.get_balance(address)) >= minimum:
                return
            response = self.w3.provider.make_request("anvil_setBalance", [address, hex(DEV_FUNDING_WEI)])
        if "error" in response:
            raise ChainUnavailable(
                f"{address} has no funds on chain {self.chain_id} and the node does not fund development "
                f"accounts ({response['error'].get('message')}); fund it from the chain's operator"
            )

    def close(self) -> None:
        return None


RPC_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def _outbound_provider_class() -> type[Any]:
    """web3's HTTP provider with its POSTs sent by the node's outbound client."""
    from web3 import HTTPProvider

    class OutboundHTTPProvider(HTTPProvider):
        outbound: OutboundClient

        def _make_request(self, method: str, request_data: bytes) -> bytes:
            response = self.outbound.request(
                "POST",
                str(self.endpoint_uri),
                content=request_data,
                headers={"Content-Type": "application/json"},
                max_bytes=RPC_MAX_RESPONSE_BYTES,
            )
            if response.status_code != 200:
                raise ChainUnavailable(
                    f"the chain at {self.endpoint_uri} answered HTTP {response.status_code}"
                )
            return bytes(response.content)

    return OutboundHTTPProvider


def open_chain(
    url: str,
    *,
    data_dir: Path,
    account: Any | None,
    registry: str | None = None,
    expected_chain_id: int | None = None,
    confirmations: int = 1,
) -> Chain:
    """The chain ``AGORA_CHAIN_URL`` names: ``embedded`` or an http(s) JSON-RPC URL."""
    from kernel.errors import ConfigurationError

    if url == "embedded":
        return EmbeddedChain(data_dir, account)
    if url.startswith(("http://", "https://")):
        return RpcChain(
            url, account, registry=registry, expected_chain_id=expected_chain_id, confirmations=confirmations
        )
    raise ConfigurationError(f"AGORA_CHAIN_URL must be 'embedded' or an http(s) URL, got {url!r}")
