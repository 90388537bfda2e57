"""The node's one settings object.

Built once per process (``Settings.load``) from, in order of precedence: explicit
arguments (CLI flags), ``AGORA_*`` environment variables, the node's config file
``$AGORA_HOME/config.toml`` written by ``agora init``, and the defaults below. It is then
passed to whatever needs it; nothing else reads the environment.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kernel.errors import ConfigurationError

CONFIG_FILE = "config.toml"
DEFAULT_HOME = Path("~/.agora")


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from ``config.toml`` in the node's home (below environment variables)."""

    def __init__(self, settings_cls: type[BaseSettings], home: Path) -> None:
        super().__init__(settings_cls)
        path = home / CONFIG_FILE
        self._values: dict[str, Any] = {}
        if path.exists():
            try:
                self._values = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields and k != "home"}


class Settings(BaseSettings):
    """Configuration of one node; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="AGORA_", extra="ignore", frozen=True)

    home: Path = Field(default=DEFAULT_HOME, description="data dir: keys, config, SQLite, objects")
    name: str = Field(default="", description="the organisation's display name")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home")
    storage_url: str = Field(default="", description="file://DIR or s3://BUCKET")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    chain_url: str = "embedded"
    chain_registry: str = ""
    chain_id: int | None = Field(default=None, description="refuse a JSON-RPC chain with another id")
    chain_confirmations: int = Field(default=1, ge=1, le=64)
    anchor_batch_size: int = Field(default=100, ge=1, le=10_000, description="assets per Merkle batch")
    negotiation_timeout: float = Field(default=600.0, gt=0, description="seconds a negotiation may take")
    catalog_crawl_interval: float = Field(
        default=30.0, gt=0, description="seconds between peer catalog crawls"
    )
    anchor_max_delay: float = Field(default=2.0, ge=0, description="seconds a record waits for a full batch")
    public_url: str = "http://127.0.0.1:8000"
    accept_registered_participants: bool = Field(
        default=False,
        description="answer participants known only from the on-chain registry (they may ask, "
        "negotiate and use agreements; they are never crawled or listed)",
    )
    dcp_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="data space membership: the DCP scopes (comma separated, e.g. "
        "org.eclipse.dspace.dcp.vc.type:MembershipCredential:read) naming credentials every DSP "
        "caller must present; a caller that is not a peer is then admitted when they verify",
    )
    dcp_sts_client_id: str = Field(
        default="",
        max_length=200,
        description="the client id of the holder's token service (POST /dcp/sts/token, for a verifier "
        "driven from outside such as the Eclipse DCP TCK); with dcp_sts_client_secret; off when empty",
    )
    dcp_sts_client_secret: SecretStr = Field(
        default=SecretStr(""), description="the token service's client secret (at least 24 characters)"
    )
    did: str = Field(default="", description="this node's DID (did:web); default: the did:web of public_url")
    did_web_use_https: bool = Field(
        default=True,
        description="resolve did:web over HTTPS (loopback hosts always resolve over HTTP); "
        "false only on test networks",
    )
    dsp_test_participant: str = Field(
        default="",
        max_length=200,
        description="conformance runs only: the participant id of a test connector that sends a fixed "
        "Authorization value (the Eclipse DSP TCK's TCK_PARTICIPANT), with dsp_test_token and "
        "dsp_test_callback",
    )
    dsp_test_token: SecretStr = Field(
        default=SecretStr(""), description="the exact Authorization value the test connector sends"
    )
    dsp_test_callback: str = Field(
        default="", max_length=500, description="the test connector's DSP base (its callbacks' origin)"
    )
    dsp_conformance: bool = Field(
        default=False,
        description="conformance runs only, with the dsp_test_* settings: seed the Eclipse DSP TCK's "
        "datasets and agreements and play its cases' scripts (connector/dsp/conformance.py)",
    )
    dsp_send_delay: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="seconds each protocol message waits before it is first sent (conformance runs: 0.5)",
    )
    outbound_allow_private: bool = Field(
        default=False, description="outbound requests may go to private addresses (10/8, fc00::/7 …)"
    )
    outbound_allow_loopback: bool | None = Field(
        default=None, description="outbound requests may go to loopback; default: when public_url is loopback"
    )
    outbound_connect_timeout: float = Field(default=3.0, gt=0, description="seconds to connect to a peer")
    outbound_read_timeout: float = Field(default=30.0, gt=0, description="seconds a peer may send nothing")
    outbound_deadline: float = Field(
        default=120.0, gt=0, description="seconds one outbound request and its whole answer may take"
    )
    outbound_max_response_bytes: ByteSize = Field(
        default=ByteSize(16 * 1024**2), description="largest answer a peer may send to a protocol message"
    )
    oidc_issuer: str = ""
    oidc_jwks_url: str = ""
    oidc_audience: str = ""
    sandbox: Literal["bwrap", "podman", "docker", "kubernetes"] = "bwrap"
    sandbox_evaluator_image: str = Field(
        default="",
        description="podman/docker/kubernetes: image (with digest) holding torch, skl2onnx, onnx and "
        "onnxruntime, for the export and audit runs",
    )
    sandbox_namespace: str = Field(default="default", description="kubernetes: namespace of job pods")
    sandbox_volume_claim: str = Field(
        default="", description="kubernetes: PVC holding the jobs directory, shared with the node"
    )
    jobs_workers: int = Field(default=1, ge=0, le=64, description="job worker threads in agora serve")
    federations_enabled: bool = Field(
        default=True, description="run the federated-learning round driver and local rounds in agora serve"
    )
    jobs_holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="share of a dataset the node keeps back to verify models"
    )
    jobs_max_cpu_seconds: int = Field(default=3600, ge=1, description="most CPU seconds a job may ask")
    jobs_max_memory: ByteSize = Field(default=ByteSize(8 * 1024**3), description="most memory a job may ask")
    jobs_max_wall_time: float = Field(default=3600.0, gt=0, description="most seconds a job may run")
    jobs_max_output: ByteSize = Field(default=ByteSize(1024**3), description="largest output a job may ask")
    profile_min_count: int = Field(
        default=10,
        ge=2,
        le=1_000_000,
        description="a dataset profile lists a category's value only when at least this many rows hold it",
    )
    quality_worker: bool = Field(
        default=True, description="validate and profile dataset versions in agora serve (beside the notary)"
    )
    quality_timeout: float = Field(
        default=3600.0, gt=0, description="seconds one version's validation and profile may take"
    )
    quality_max_memory: ByteSize = Field(
        default=ByteSize(8 * 1024**3),
        description="most memory one validation may reserve (RLIMIT_DATA: about 1 GB above what it "
        "holds; 1 GiB of CSV holds about 3 GB); 0: no limit",
    )
    key_passphrase: SecretStr | None = None
    max_upload_bytes: int = Field(default=8 * 1024**3, gt=0, description="largest accepted upload")
    max_json_bytes: int = Field(
        default=1024**2,
        ge=64 * 1024,
        description="largest JSON body of the management API (protocol messages have their own "
        "1 MiB cap, a job submission its bundle's, /chain/rpc 256 KiB)",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=8 * 1024, le=1024**2, description="largest request line plus headers"
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a client may take to send a request's headers, and the longest "
        "pause in a body (a buffered body must then keep 64 KiB/s on average)",
    )
    import_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="server-side directories offerings may be registered from (by path)",
    )
    token_ttl_max_seconds: int = 90 * 24 * 3600
    url: str = Field(default="", description="node the CLI talks to; default: public_url")
    token: SecretStr | None = Field(default=None, description="bearer token the CLI sends")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("import_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.split(":") if p]
        return value

    @field_validator("dcp_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("dcp_scopes", mode="after")
    @classmethod
    def _check_scopes(cls, value: list[str]) -> list[str]:
        if not value:
            return value
        from connector.dcp.tokens import parse_scopes  # only when set: every command builds Settings

        for scope in value:
            if " " in scope or len(scope) > 300 or not parse_scopes([scope]):
                raise ValueError(f"{scope[:100]!r} is not a DCP read scope (alias:discriminator:read)")
        return value

    @model_validator(mode="after")
    def _check_sts(self) -> Settings:
        secret = self.dcp_sts_client_secret.get_secret_value()
        if bool(self.dcp_sts_client_id) != bool(secret):
            raise ValueError("the token service needs both dcp_sts_client_id and dcp_sts_client_secret")
        if not secret:
            return self
        from connector.dcp.sts import MIN_SECRET  # only when configured: the import costs 0.4 s

        if len(secret) < MIN_SECRET:
            raise ValueError(f"dcp_sts_client_secret must be at least {MIN_SECRET} characters")
        return self

    @field_validator("import_dirs", mode="after")
    @classmethod
    def _resolve_dirs(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        home = _home_from(init_settings(), env_settings())
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, home))

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build the settings; ``None`` overrides (unset CLI flags) are ignored.

        An invalid value (say ``AGORA_MAX_UPLOAD_BYTES=lots``) is a
        :class:`ConfigurationError` naming the setting, not a traceback.
        """
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"AGORA_{str(e['loc'][0]).upper() if e['loc'] else ''}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigurationError(f"invalid settings: {problems}") from None

    # Derived values -------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'agora.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or f"file://{self.home / 'objects'}"

    @property
    def keystore_path(self) -> Path:
        return self.home / "keystore.json"

    @property
    def passphrase_path(self) -> Path:
        return self.home / "keystore.passphrase"

    @property
    def token_key_path(self) -> Path:
        return self.home / "token-key.jwk"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def chain_dir(self) -> Path:
        return self.home / "chain"

    @property
    def chain_rpc_url(self) -> str:
        """Where verifiers reach this node's chain: the JSON-RPC URL, or the embedded chain
        served read-only by this node."""
        if self.chain_url == "embedded":
            return self.public_url.rstrip("/") + "/chain/rpc"
        return self.chain_url

    @property
    def effective_did(self) -> str:
        """This node's DID: the one configured, else the did:web of its public URL."""
        if self.did:
            return self.did
        from connector.dsp.identity import did_for_url

        return did_for_url(self.public_url)

    @property
    def dsp_url(self) -> str:
        """The base URL of this node's DSP binding (advertised at /.well-known/dspace-version)."""
        from connector.dsp.binding import BASE_PATH

        return self.public_url.rstrip("/") + BASE_PATH

    @property
    def token_issuer(self) -> str:
        """The ``iss`` of tokens this node signs: its public URL."""
        return self.public_url.rstrip("/")

    @property
    def outbound_loopback_allowed(self) -> bool:
        """Loopback peers are a development setup: allowed when this node itself is on loopback."""
        if self.outbound_allow_loopback is not None:
            return self.outbound_allow_loopback
        from kernel.addresses import is_loopback_url

        return is_loopback_url(self.public_url)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)


def _home_from(*sources: dict[str, Any]) -> Path:
    for source in sources:
        if source.get("home"):
            return Path(source["home"]).expanduser()
    return DEFAULT_HOME.expanduser()
