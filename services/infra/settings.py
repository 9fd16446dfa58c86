"""The one configuration object (STYLE.md §5), built from the environment at process start.

Every variable of spec/inbound.md §6 and spec/outbound.md §0.4 plus the architecture's
NATS, stream and port variables. Which variables are *required* depends on the service
that runs (a webhook-only deployment needs no Clerk key): see ``REQUIRED_BY_SERVICE`` and
``Settings.require``. ``load_settings`` (every entry point) also reads ``./.env`` when present,
the environment overriding it, and reports every problem at once (``collect_settings``): an
unknown choice or invalid JSON is an error naming the variable, never a silent default.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GHL_ED25519_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=
-----END PUBLIC KEY-----"""

GHL_RSA_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----"""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _flag_exactly_true(value: Any) -> bool:
    """Original semantics: enabled only when the string is exactly ``true`` (spec R4)."""
    if isinstance(value, bool):
        return value
    return value is not None and str(value) == "true"


def _flag_unless_false(value: Any) -> bool:
    """Original semantics: enabled unless the string is exactly ``false`` (spec R4)."""
    if isinstance(value, bool):
        return value
    return value is None or str(value) != "false"


_SEQUENCE_MAP = 'a JSON object such as {"hot": "<sequence id>", "warm": {"sequence_id": "<id>", "optional": true}}'


def _status_to_sequence(value: Any) -> Any:
    """``ALOWARE_STATUS_TO_SEQUENCE`` (spec/outbound.md S-5): a JSON object of status → sequence id
    or ``{"sequence_id", "optional"}``; empty means ``{}``. The original read invalid JSON as
    ``{}`` (spec/inbound.md §6.1), which silently switched every enrolment off; now it stops the
    start naming the variable (issue #20). The value is never echoed (it may be long)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"expected {_SEQUENCE_MAP}, but it is not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected {_SEQUENCE_MAP}, got a JSON {type(parsed).__name__}")
    for status, entry in parsed.items():
        if not isinstance(entry, str | dict) or (
            isinstance(entry, dict) and not set(entry) <= {"sequence_id", "optional"}
        ):
            raise ValueError(f"expected {_SEQUENCE_MAP}, but the entry of {status!r} is neither")
    return parsed


def _postgres_url(value: Any) -> Any:
    """Accept ``postgresql://`` URLs, including socket URLs with an empty host."""
    if value is None:
        return None
    text = str(value).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgres", "postgresql") or not rest:
        raise ValueError("expected a PostgreSQL URL such as postgresql://user@host:5432/db")
    return text


_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def pem_public_keys(text: str) -> list[Any]:
    """Every PEM public key in ``text``: several for rotation, ``\\n`` escapes allowed (a
    one-line ``.env`` value). Raises ``ValueError`` when a block is cut off or is not a key:
    a key variable that silently parses to fewer keys lets the ingress start and then
    refuse every genuine webhook with 401."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = text.replace("\\n", "\n")
    blocks = _PEM_BLOCK.findall(text)
    if not blocks:
        raise ValueError(f"expected one or more PEM public keys ({_PEM_BEGIN} ...), found none")
    if text.count(_PEM_BEGIN) != len(blocks):
        raise ValueError("expected complete PEM public keys, but one is cut off (no END line)")
    keys: list[Any] = []
    for number, block in enumerate(blocks, 1):
        try:
            keys.append(load_pem_public_key(block.encode()))
        except ValueError:  # cryptography's UnsupportedAlgorithm is a ValueError too
            raise ValueError(f"expected PEM public keys, but key {number} cannot be read") from None
    return keys


def _public_keys_of(kind: str) -> Any:
    """A validator: the text holds only ``kind`` keys (``ed25519`` or ``rsa``)."""

    def check(value: Any) -> Any:
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        wanted = ed25519.Ed25519PublicKey if kind == "ed25519" else rsa.RSAPublicKey
        if isinstance(value, str):
            for number, key in enumerate(pem_public_keys(value), 1):
                if not isinstance(key, wanted):  # a ValueError: pydantic reports only those as invalid
                    raise ValueError(f"expected {kind} public keys, but key {number} is another kind")
        return value

    return check


# A secret that may hold several comma-separated values (rotation, spec C5).
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_commas)]
CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
FlagTrue = Annotated[bool, NoDecode, BeforeValidator(_flag_exactly_true)]
FlagUnlessFalse = Annotated[bool, NoDecode, BeforeValidator(_flag_unless_false)]


class ConfigError(Exception):
    """Required variables are missing or values are malformed: ``problems`` holds one line per
    variable, each starting with its name (``NAME is required: ...``, ``NAME is malformed:
    ...``), so an operator fixes everything in one go. ``str()`` is one line (joined by ``; ``)."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems or ("the configuration is invalid",)

    def __str__(self) -> str:
        return "; ".join(self.problems)


class Settings(BaseSettings):
    """All configuration. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", env_ignore_empty=True, validate_default=True
    )

    # --- runtime and database -------------------------------------------------------------
    database_url: Annotated[str | None, BeforeValidator(_postgres_url)] = None
    node_env: Literal["development", "production", "test"] = "development"
    base_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = Field(
        default="auto",
        description="auto: human-readable lines on a terminal, JSON elsewhere (a pipe, a file, a journal)",
    )
    # spans are always made and carried (traceparent in NATS and vendor headers); exported only
    # when this says so; the OTLP exporter reads the standard OTEL_EXPORTER_OTLP_* variables
    otel_traces_exporter: Literal["none", "console", "otlp"] = "none"
    db_max_connections: int = Field(default=10, ge=1, le=500)
    db_idle_timeout: int = Field(default=30, ge=1)
    db_connection_timeout: int = Field(default=10, ge=1)
    # applied to every connection of the services' engines (db/session.py); 0 turns one off
    db_statement_timeout_ms: int = Field(
        default=60_000, ge=0, description="longest statement; a runaway query fails instead of holding a connection"
    )
    db_lock_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="longest wait for a lock (rows, contact advisory locks); then the "
        "statement fails and the delivery is retried",
    )
    db_idle_in_transaction_timeout_ms: int = Field(
        default=120_000,
        ge=0,
        description="a session idle inside a transaction this long is closed by the server "
        "and its locks released; longer than an OAuth refresh call (held under its row lock)",
    )
    dfm_data_dir: str = ".dfm"
    dfm_up_services: CsvList = Field(
        default_factory=lambda: [
            "ingress",
            "recorder",
            "ghl-sync",
            "aloware-sync",
            "verity-sync",
            "jobs",
            "scheduler",
            "gateway",
            "console",
        ],
        description="services `dfm up` starts (comma-separated)",
    )
    dfm_sandbox_webhook_url: str | None = Field(
        default=None, description="sandbox only: ingress base URL the fake vendors post webhooks to"
    )
    dfm_consumer_ack_wait_s: float | None = Field(
        default=None, gt=0, description="override the durable consumers' AckWait (seconds)"
    )
    dfm_rule_deadline_s: float = Field(
        default=120,
        gt=0,
        le=3600,
        description="longest run of one rule; then it is cancelled and retried (RetryLater) and its heartbeat stops",
    )
    dfm_fault_pause_after_vendor_write_s: float = Field(
        default=0, ge=0, description="fault tests only: pause between a vendor write and the ack"
    )
    dfm_ghl_signing_key_file: str | None = Field(
        default=None, description="dev/sandbox only: Ed25519 private key used by `dfm send`"
    )

    # --- NATS and streams (ARCHITECTURE.md §4) --------------------------------------------
    nats_url: CsvList = Field(default_factory=list)
    dfm_stream_replicas: int = Field(default=1, ge=1, le=5)
    dfm_stream_max_age: float = Field(default=7 * 24 * 3600, gt=0, description="seconds")
    dfm_stream_duplicate_window: float = Field(default=7200, gt=0, description="seconds")
    dfm_publish_timeout: float = Field(default=2.0, gt=0, description="seconds")
    # NATS identity (deploy/README.md "NATS identities"): a credential from these settings, never
    # from the URL that gets logged; see services/infra/nats_auth.py for who may do what
    nats_creds_file: str | None = Field(default=None, description="JWT .creds file (operator mode)")
    nats_nkey_seed_file: str | None = Field(default=None, description="nkey seed file of this process")
    nats_credentials_dir: str | None = Field(
        default=None, description="`dfm nats creds --out` directory: each connection uses <identity>.nk"
    )
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_identity: str | None = Field(
        default=None, description="this process's identity in the table; `dfm run` sets the service's"
    )
    # NATS TLS (deploy/README.md "NATS TLS"): with a CA file every connection is TLS, verified
    nats_tls_ca_file: str | None = Field(default=None, description="CA that signed the NATS servers' certificate")
    nats_tls_cert_file: str | None = Field(default=None, description="client certificate (servers that verify)")
    nats_tls_key_file: str | None = Field(default=None, description="key of NATS_TLS_CERT_FILE")
    nats_tls_hostname: str | None = Field(
        default=None, description="name to verify the server certificate against, when not the URL's host"
    )
    dfm_stream_allow_downgrade: bool = Field(
        default=False, description="let the topology step lower num_replicas or max_age of a stream"
    )

    # --- server ports ---------------------------------------------------------------------
    ingress_port: int = Field(default=3002, ge=1, le=65535)
    dfm_ingress_workers: int = Field(default=1, ge=1, le=64, description="uvicorn processes")
    dfm_drain_grace_s: float = Field(
        default=5,
        ge=0,
        le=300,
        description="after SIGTERM the ingress answers readiness 503 this long before it stops accepting",
    )
    dfm_backup_dir: str | None = Field(
        default=None,
        description="where `dfm backup` writes (default $XDG_STATE_HOME/dfm/backups, else "
        "~/.local/state/dfm/backups: outside the repository)",
    )
    dfm_backup_retention: int = Field(default=7, ge=1, le=1000, description="backups `dfm backup` keeps")
    dfm_backup_key: SecretList = Field(
        default_factory=list,
        description="Fernet key(s) encrypting backups (`dfm backup --encrypt`, the "
        "default when set); the first encrypts, all decrypt; not DFM_TOKEN_KEY",
    )
    dfm_pg_bin_dir: str | None = Field(
        default=None,
        description="the only directory `dfm backup`/`restore` take pg_dump/pg_restore from "
        "(default: PATH, /usr/lib/postgresql/<major>/bin, the pgserver wheel; the server's major version)",
    )
    dfm_drain_timeout_s: float = Field(
        default=20, gt=0, le=600, description="how long a stopping consumer waits for messages in hand"
    )
    gateway_port: int = Field(default=3001, ge=1, le=65535, validation_alias=AliasChoices("gateway_port", "port"))
    sandbox_port: int = Field(default=3099, ge=1, le=65535)
    # --- operator console (services/console) --------------------------------------------
    console_port: int = Field(default=3004, ge=1, le=65535)
    console_host: str = Field(
        default="127.0.0.1",
        description="address the console binds; anything but loopback needs "
        "CONSOLE_TLS_PROXY (a TLS-terminating proxy in front) under NODE_ENV=production",
    )
    console_operators: CsvList = Field(
        default_factory=list,
        description="name:hash pairs, comma-separated; the hash is what "
        "`dfm console hash-password` prints (scrypt$…). Unset: DF_ADMIN_SECRET signs in as admin (first start)",
    )
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="key signing the console's session cookie; required in production "
        "(elsewhere a random one per process: sessions end when it restarts)",
    )
    console_idle_timeout_s: int = Field(
        default=1800, ge=60, le=86_400, description="a console session unused this long is signed out"
    )
    console_session_max_age_s: int = Field(
        default=43_200, ge=300, le=604_800, description="a console session ends this long after sign-in, used or not"
    )
    console_tls_proxy: bool = Field(
        default=False,
        description="the console is reached only through a TLS-terminating proxy (required "
        "in production when CONSOLE_HOST is not loopback)",
    )
    console_trusted_proxies: CsvList = Field(
        default_factory=list,
        description="CIDRs of proxies whose X-Forwarded-For the console believes for "
        "sign-in throttling (default none: the peer address is the client)",
    )
    console_signin_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="failed console sign-ins per client address, and per user name, "
        "in 15 minutes; then sign-in is refused for them until the window passes",
    )
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # the metrics port also answers GET /health/live and GET /health (services/infra/metrics_server.py)
    dfm_health_stall_s: float = Field(
        default=180,
        gt=0,
        le=3600,
        description="a consumer is not ready (GET /health on METRICS_PORT answers "
        "503) when every handler of its fetch loop has been busy this long with no message started or finished; "
        "longer than DFM_RULE_DEADLINE_S",
    )
    dfm_state_gauges_interval_s: float = Field(
        default=15,
        gt=0,
        le=3600,
        description="how often every jobs replica recomputes the gauges of the whole "
        "database and stream (backlog, oldest pending event, consumer lag); replicas export the same values, so "
        "rules and dashboards take their max",
    )
    dfm_metrics_multiproc_dir: str | None = Field(
        default=None,
        description="with DFM_INGRESS_WORKERS > 1: where the ingress makes a fresh directory for its "
        "workers' metric files at each start, removed at exit (default: the system temp directory; on a read-only "
        "root filesystem a writable volume)",
    )
    ingress_limit_concurrency: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="connections plus requests in progress per ingress process; "
        "beyond it uvicorn answers 503 (each may buffer up to WEBHOOK_MAX_BODY_BYTES)",
    )
    ingress_docs_enabled: bool | None = Field(
        default=None, description="/docs, /redoc and /openapi.json on the ingress (default: on outside production)"
    )

    # --- GHL --------------------------------------------------------------------------------
    ghl_api_key: SecretStr | None = None
    ghl_location_id: str | None = None
    ghl_calendar_id: str | None = None
    ghl_base_url: str = "https://services.leadconnectorhq.com"
    ghl_webhook_secret: SecretStr | None = None
    ghl_conversation_provider_id: str | None = None
    ghl_client_id: str | None = None
    ghl_client_secret: SecretStr | None = None
    ghl_oauth_redirect_uri: str | None = None
    # the install callback (services/ingress/oauth_route.py; security-audit F12)
    ghl_oauth_state_key: SecretStr | None = Field(
        default=None, description="HMAC key signing the install `state` (default: derived from GHL_CLIENT_SECRET)"
    )
    ghl_oauth_state_ttl_s: int = Field(
        default=900, ge=60, le=86_400, description="how long an install started at /leadconnector/oauth/start may take"
    )
    ghl_oauth_allow_install_without_state: bool = Field(
        default=False,
        description="accept installs started from the Marketplace, which carry no state of ours "
        "(the location must still be allowed)",
    )
    ghl_oauth_allowed_locations: CsvList = Field(
        default_factory=list,
        description="locations whose tokens the install callback stores (default: GHL_LOCATION_ID)",
    )
    ghl_oauth_rate_limit_max: int = Field(
        default=20, ge=1, description="install callbacks per client address per 15 minutes"
    )
    ghl_oauth_authorize_url: str = "https://marketplace.gohighlevel.com/v2/oauth/chooselocation"
    ghl_oauth_scopes: str = (
        "conversations.readonly conversations.write conversations/message.readonly conversations/message.write"
    )
    dfm_token_key: SecretList = Field(
        default_factory=list,
        description="Fernet key(s) encrypting OAuth tokens at rest; the first encrypts, all decrypt",
    )
    ghl_provider_message_type: str = "SMS"
    ghl_cf_aloware_contact_id: str | None = None
    ghl_cf_lead_source: str | None = None
    ghl_cf_intake_source: str | None = None
    ghl_assigned_agent_field_key: str = "assignedAgent"
    ghl_rate_limit_per_10s: int = Field(
        default=80, ge=1, le=1_000_000, description="GHL allows 100; more only against the sandbox"
    )
    ghl_rate_limit_per_day: int = Field(
        default=180_000,
        ge=1,
        description="GHL allows 200,000 a day; held over a rolling 24 h by all replicas (clients/budget.py)",
    )
    # --- vendor budget (#18): fields of services/clients/budget.py go here ---
    ghl_rate_budget_learn: bool = Field(
        default=True,
        description="adopt the window GHL states in its X-RateLimit-Max / -Interval-Milliseconds headers; "
        "GHL_RATE_LIMIT_PER_10S holds only until the first answer (false: it holds always)",
    )
    ghl_rate_budget_fraction: float = Field(
        default=0.98, gt=0, le=1, description="share of GHL's learned X-RateLimit-Max the replicas spend together"
    )
    ghl_rate_budget_margin_s: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="a request holds its slot this long after the window (the network's jitter; GHL counts arrivals)",
    )
    ghl_rate_budget_realtime_reserve: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="share of the window the bulk lane leaves free while the realtime lane is active",
    )
    ghl_rate_budget_realtime_demand_s: float = Field(
        default=2.0, gt=0, le=60, description="how long one realtime request keeps the realtime lane active"
    )
    # --- end vendor budget ---
    # --- lanes (#18): fields of the lane classification go here ---
    dfm_bulk_subjects: CsvList = Field(
        # contracts.lanes.DEFAULT_BULK_SUBJECTS (tests/unit/test_lanes_split.py keeps them equal)
        default_factory=lambda: [
            "webhooks.aloware.contact.contact_created",
            "webhooks.aloware.contact.contact_updated",
        ],
        description="subject patterns ghl-sync serves on its bulk lane (durable ghl-sync-bulk), after the "
        "real-time one; everything else it takes is real-time. `dfm migrate upgrade` applies a change, "
        "and refuses while the lane losing subjects still has messages waiting (`dfm lanes`)",
    )
    dfm_lane_requests_per_event: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="GHL requests one event costs on average, for the lanes' expected drain time "
        "(dfm_lane_drain_seconds, dfm lanes)",
    )

    @field_validator("dfm_bulk_subjects")
    @classmethod
    def _bulk_subjects_split_ghl_sync(cls, value: list[str]) -> list[str]:
        from contracts.lanes import check_bulk_pattern, split_filters
        from contracts.streams import GHL_SYNC_FILTERS

        split_filters(GHL_SYNC_FILTERS, [check_bulk_pattern(p) for p in value])  # a LaneConfigError names it
        return value

    # --- end lanes ---
    ghl_note_max_chars: int = Field(default=50_000, ge=100)
    ghl_set_dnd_on_optout: FlagTrue = False
    ghl_webhook_ed25519_public_key: Annotated[str, BeforeValidator(_public_keys_of("ed25519"))] = GHL_ED25519_PUBLIC_KEY
    ghl_webhook_rsa_public_key: Annotated[str, BeforeValidator(_public_keys_of("rsa"))] = GHL_RSA_PUBLIC_KEY
    ghl_accept_legacy_rsa: bool = True
    ghl_webhook_verify_mode: Literal["enforce", "log_only"] = "enforce"
    ghl_webhook_max_age_s: int = Field(default=7200, ge=60)
    ghl_workflow_webhook_token: SecretList = Field(default_factory=list)

    # --- Aloware ----------------------------------------------------------------------------
    aloware_api_token: SecretStr | None = None
    aloware_base_url: str = "https://app.aloware.com/api/v1"
    aloware_max_rps: float = Field(default=5, gt=0)
    aloware_webhook_basic_user: str | None = None
    aloware_webhook_basic_pass: SecretList = Field(default_factory=list)
    aloware_webhook_bearer_token: SecretList = Field(default_factory=list)
    aloware_webhook_allowed_events: CsvList = Field(default_factory=list)
    aloware_status_to_sequence: Annotated[dict[str, Any], NoDecode, BeforeValidator(_status_to_sequence)] = Field(
        default_factory=dict,
        description="JSON: Aloware list status → sequence id, or "
        '{"sequence_id": ..., "optional": true}; invalid JSON stops the start',
    )
    enable_aloware_sequences: FlagTrue = False

    # --- Verity, texting, Clerk --------------------------------------------------------------
    verity_base_url: str | None = None
    verity_api_key: SecretStr | None = None
    verity_webhook_secret: SecretList = Field(default_factory=list)
    verity_forward_secret: SecretStr | None = Field(
        default=None,
        description="sent as X-Middleware-Secret on the F-1 forward to Verity; outside production "
        "VERITY_WEBHOOK_SECRET stands in (with a warning), in production nothing does",
    )
    verity_database_url: str | None = None
    verity_catalog_path: str | None = None
    mcp_tool_allowlist: CsvList = Field(
        default_factory=list,
        description="catalog tools `dfm run mcp` lists: tool names or glob patterns "
        "(comms_*), comma-separated; empty lists every catalog tool; the dfm_* operator tools are always listed",
    )
    verity_proxy_timeout_s: float = Field(default=60, gt=0)
    texting_sync_to_aloware: FlagTrue = False
    # the plain shared-secret header: a static bearer (security-audit F13); default on outside production
    texting_accept_plain_secret: bool | None = Field(default=None, description="default: on outside production")
    broadcast_accept_plain_secret: bool | None = Field(default=None, description="default: on outside production")
    clerk_secret_key: SecretStr | None = None
    clerk_service_user_id: str | None = None
    clerk_authorized_parties: CsvList = Field(default_factory=list)
    clerk_jwt_key: str | None = None
    clerk_jwks_url: str | None = None
    clerk_jwt_issuer: str | None = None
    clerk_api_url: str = "https://api.clerk.com/v1"
    mcp_base_url: str = "http://localhost:3002"

    # --- middleware secrets ------------------------------------------------------------------
    df_middleware_api_key: SecretList = Field(default_factory=list)
    df_admin_secret: SecretList = Field(default_factory=list)
    x_df_jobs_secret: SecretList = Field(default_factory=list)
    dfm_insecure_allow_unsigned: CsvList = Field(default_factory=list)
    dfm_allow_insecure_in_production: CsvList = Field(
        default_factory=list, description="insecure switches (INSECURE_SWITCHES) a production process accepts"
    )
    webhook_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    webhook_body_read_timeout_s: float = Field(
        default=10,
        gt=0,
        le=300,
        description="longest time to receive a webhook body; then 408 (the body is "
        "buffered before authentication, so a slow one must not hold its worker for ever)",
    )
    # the consumers' envelope parser refuses more than 200 levels and the envelope adds its own
    webhook_max_json_depth: int = Field(
        default=64, ge=2, le=190, description="deepest JSON nesting a webhook body may have"
    )
    # NATS's max_payload when no server has told us yet (the outbox path while NATS is down);
    # every shipped NATS config sets max_payload to this value
    dfm_nats_max_payload: int = Field(
        default=2_097_152, ge=65_536, description="bytes; used until a server announces its own"
    )

    # --- gateway ------------------------------------------------------------------------------
    gateway_forward_headers: CsvList = Field(default_factory=list)
    gateway_catalog_enforce: bool = Field(
        default=False, description="answer 404 for endpoints missing from the catalog (default: warn)"
    )
    cors_allowed_origins: CsvList = Field(default_factory=list)
    rate_limit_max: int = Field(default=100, ge=1)
    gateway_auth_failure_max: int = Field(
        default=10,
        ge=1,
        description="failed API-key attempts per client address per 15 minutes; then "
        "every request of that address carrying a key is 429 until the window ends",
    )
    gateway_trusted_proxies: CsvList = Field(
        default_factory=list,
        description="CIDRs of proxies whose X-Forwarded-For the gateway believes "
        "(default none: the peer address is the client)",
    )
    webhook_rate_limit_max: int = Field(default=1000, ge=1)
    admin_rate_limit_max: int = Field(default=50, ge=1)

    # --- jobs, retries, sweep, alerts --------------------------------------------------------
    jobs_batch_size: int = Field(default=100, ge=1, le=10_000)
    retry_max_attempts: int = Field(default=11, ge=1, le=100)
    retry_base_delay_s: float = Field(default=60, gt=0)
    retry_max_delay_s: float = Field(default=3600, gt=0)
    sweep_cron: str | None = "*/5 * * * *"
    sweep_pending_min_age_s: int = Field(default=120, ge=0)
    sweep_stale_processing_s: int = Field(default=900, ge=1)
    dfm_effect_claim_ttl_s: float = Field(
        default=300,
        gt=0,
        description="how long an attempt holds the claim on an irreversible vendor write "
        "before another may take it over; longer than the vendor timeouts plus the rate-budget wait",
    )
    reconcile_cron: str | None = None
    reconcile_batch_size: int = Field(default=200, ge=1, le=10_000)
    alert_webhook_url: str | None = None
    alert_check_cron: str | None = "* * * * *"
    dfm_retry_nak_max_delay_s: float = Field(
        default=120,
        ge=0,
        description="retries due sooner are NAKed with that delay; later ones are left to the sweep",
    )
    echo_window_seconds: int = Field(default=600, ge=1)
    ghl_echo_ignores_timezone: bool = Field(
        default=True,
        description="LP-1: a GHL webhook body without a timezone (GHL's contact webhooks carry none) is "
        "matched against our write without it, so an echo costs no GHL read; false: each such echo is read "
        "back (one GHL request), so a person's timezone-only edit within ECHO_WINDOW_SECONDS still reaches Aloware",
    )
    # --- retention (services/jobs/purge.py): ages past which rows go; 0 keeps them --------
    purge_cron: str | None = "30 3 * * *"
    purge_batch_size: int = Field(default=1000, ge=1, le=100_000, description="rows per DELETE/UPDATE")
    retention_sync_log_days: int = Field(default=180, ge=0)  # spec/outbound.md §4.3
    retention_event_attempts_days: int = Field(default=30, ge=0)
    retention_event_payloads_days: int = Field(
        default=30,
        ge=0,
        description="finished events' payloads are emptied (payload_json '{}', payload_raw NULL); the status rows stay",
    )
    retention_outbound_writes_s: int = Field(
        default=86_400, ge=0, description="echo ledger (spec §4.9: 1 day); never less than ECHO_WINDOW_SECONDS"
    )
    retention_outbox_published_s: int = Field(default=86_400, ge=0)
    retention_payload_raw_forwarded_s: int = Field(
        default=3600,
        ge=0,
        description="raw GHL bodies of events received longer ago are dropped once the Verity forward (F-1) is done",
    )

    # --- routing, lists, features ------------------------------------------------------------
    # an unknown value stops the start naming the variable; the original quietly used the default
    contact_source_of_truth: Literal["ghl", "aloware", "merge"] = "merge"
    sync_ghl_contacts_to_aloware: bool = True
    sync_aloware_contacts_to_ghl: bool = True
    ghl_snapshot_max_age_s: float = Field(
        default=900,
        ge=0,
        description="CA trusts the GHL snapshot kept with a mapping for this long; an older "
        "one is verified with one GET first (a lost GHL webhook goes unnoticed for at most this long; 0: always)",
    )
    agent_list_keys: CsvList = Field(default_factory=lambda: ["CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT"])
    default_agent_key: str = "UNASSIGNED"
    enable_agent_list_sync: FlagUnlessFalse = True
    enable_power_dialer_lists: FlagTrue = False
    tag_match_mode: Literal["exact", "case_insensitive", "regex"] = "case_insensitive"  # unknown: an error
    default_phone_region: str = Field(default="US", min_length=2, max_length=2)

    # --- other components (listed so the object is complete) -----------------------------
    elevenlabs_webhook_secret: SecretStr | None = None
    openai_api_key: SecretStr | None = None

    @field_validator("ghl_location_id", "aloware_webhook_basic_user", mode="before")
    @classmethod
    def _trim(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator(
        "texting_accept_plain_secret", "broadcast_accept_plain_secret", "ingress_docs_enabled", mode="before"
    )
    @classmethod
    def _on_unless_production(cls, value: Any, info: ValidationInfo) -> Any:
        """Unset: on for development and tests (``dfm up``, the suite), off in production; so
        after validation the value is a bool, never None."""
        if value is None:
            return info.data.get("node_env") != "production"
        return value

    def insecure_switches(self) -> dict[str, str]:
        """The insecure switches this configuration sets: variable name → its value."""
        found: dict[str, str] = {}
        if self.dfm_insecure_allow_unsigned:
            found["DFM_INSECURE_ALLOW_UNSIGNED"] = ",".join(self.dfm_insecure_allow_unsigned)
        if self.ghl_webhook_verify_mode == "log_only":
            found["GHL_WEBHOOK_VERIFY_MODE"] = self.ghl_webhook_verify_mode
        return found

    def refuse_insecure_in_production(self) -> None:
        """Raise ``ConfigError`` for an insecure switch under ``NODE_ENV=production`` that
        ``DFM_ALLOW_INSECURE_IN_PRODUCTION`` does not name (security-audit F15): a debugging
        switch left in a production environment opened the endpoint that sends SMS, and
        showed nowhere. The override names each switch, so accepting one is never accepting
        the next one someone sets."""
        problems = self.insecure_problems()
        if problems:
            raise ConfigError(*problems)

    def insecure_problems(self) -> list[str]:
        """What :meth:`refuse_insecure_in_production` refuses, one line per variable."""
        accepted = {name.upper() for name in self.dfm_allow_insecure_in_production}
        problems = [
            f"DFM_ALLOW_INSECURE_IN_PRODUCTION is malformed: {name} is not an insecure switch, expected "
            f"some of {', '.join(INSECURE_SWITCHES)}"
            for name in sorted(accepted - set(INSECURE_SWITCHES))
        ]
        if self.node_env == "production":
            problems += [
                f"{name}={value} is refused under NODE_ENV=production: unset it, or name it in "
                "DFM_ALLOW_INSECURE_IN_PRODUCTION to accept the risk"
                for name, value in self.insecure_switches().items()
                if name not in accepted
            ]
        return problems

    def refuse_insecure_console(self) -> None:
        """Raise ``ConfigError`` for a production console that would be unsafe to start: no
        ``CONSOLE_SESSION_SECRET`` (a per-process key would sign everyone out on every restart
        and differ between replicas), or bound beyond loopback without ``CONSOLE_TLS_PROXY``
        (its session cookie and passwords would cross the network in the clear)."""
        if self.node_env != "production":
            return
        if self.console_session_secret is None or len(self.console_session_secret.get_secret_value()) < 32:
            raise ConfigError(
                "CONSOLE_SESSION_SECRET is required under NODE_ENV=production: expected a random "
                "value of at least 32 characters"
            )
        if not _loopback(self.console_host) and not self.console_tls_proxy:
            raise ConfigError(
                f"CONSOLE_HOST={self.console_host} is refused under NODE_ENV=production without "
                "CONSOLE_TLS_PROXY=true: serve the console through a TLS-terminating proxy, or bind "
                "it to 127.0.0.1"
            )

    # --------------------------------------------------------------------------------------
    def missing(self, *names: str) -> list[str]:
        """One ``NAME is required: expected ...`` line for each of ``names`` unset or empty."""
        return [
            f"{name.upper()} is required: expected {REQUIRED_HINTS.get(name, 'a non-empty value')}"
            for name in names
            if getattr(self, name) in (None, [], "")
        ]

    def require(self, *names: str) -> None:
        """Raise ``ConfigError`` naming every one of ``names`` that is unset or empty."""
        problems = self.missing(*names)
        if problems:
            raise ConfigError(*problems)

    def require_for(self, service: str) -> None:
        """Check the variables ``service`` cannot start without."""
        self.require(*REQUIRED_BY_SERVICE.get(service, ()))

    @field_validator("sweep_cron", "alert_check_cron", "reconcile_cron", "purge_cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from services.infra.cron import parse_cron

        parse_cron(value)
        return value.strip()

    @property
    def database_url_str(self) -> str:
        """The database URL as a plain string (raises when unset)."""
        self.require("database_url")
        assert self.database_url is not None
        return self.database_url


def _loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Settings that switch authentication off; refused in production unless named in
# DFM_ALLOW_INSECURE_IN_PRODUCTION (Settings.refuse_insecure_in_production).
INSECURE_SWITCHES = ("DFM_INSECURE_ALLOW_UNSIGNED", "GHL_WEBHOOK_VERIFY_MODE")

REQUIRED_HINTS: dict[str, str] = {
    "database_url": "a PostgreSQL URL such as postgresql://user:pass@host:5432/dbname",
    "nats_url": "comma-separated NATS server URLs such as nats://127.0.0.1:4222",
    "ghl_api_key": "the GHL private integration token",
    "ghl_location_id": "the GHL location id",
    "aloware_api_token": "the Aloware API token",
    "df_admin_secret": "the admin API secret (comma-separated values allowed for rotation)",
    "x_df_jobs_secret": "the jobs API secret (comma-separated values allowed for rotation)",
    "df_middleware_api_key": "the gateway API key (comma-separated values allowed)",
    "clerk_secret_key": "the Clerk secret key",
}

_INFRA = ("database_url", "nats_url")
REQUIRED_BY_SERVICE: dict[str, tuple[str, ...]] = {
    "migrate": ("database_url",),
    "ingress": (*_INFRA, "df_admin_secret", "x_df_jobs_secret"),
    "recorder": _INFRA,
    "ghl-sync": (*_INFRA, "ghl_api_key", "ghl_location_id"),
    "aloware-sync": (*_INFRA, "aloware_api_token", "ghl_api_key", "ghl_location_id"),
    "verity-sync": _INFRA,
    "jobs": _INFRA,
    "scheduler": ("nats_url",),
    "gateway": ("df_middleware_api_key",),
    "mcp": ("clerk_secret_key",),
    "sandbox": (),
    "events": ("database_url",),
    "replay": _INFRA,
    "sweep": ("nats_url",),
    "send": (),
    "up": (),
    "trace": ("database_url",),
    "backup": _INFRA,
    "purge": ("database_url",),
    "console": _INFRA,
}


def _field_name(error: ErrorDetails) -> str | None:
    """The field an error is about (its alias resolved: ``PORT`` is ``gateway_port``)."""
    loc = error.get("loc") or ()
    if not loc:
        return None
    name = str(loc[0]).lower()
    if name in Settings.model_fields:
        return name
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and name in [str(c).lower() for c in alias.choices]:
            return field
    return None


def _describe(error: ErrorDetails) -> str:
    loc = error.get("loc") or ("?",)
    name = str(loc[0]).upper()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")  # our validators' own words
    return f"{name} is malformed: {message}"


# A .env in the current directory is read when present, as Node users expect (issue #20);
# the environment overrides it, and an explicit env file (stack.env) overrides both.
DOT_ENV = ".env"


def collect_settings(
    env_file: str | None = None, *, service: str | None = None, **overrides: Any
) -> tuple[Settings, list[str]]:
    """Build ``Settings`` from the environment, ``./.env`` and ``env_file`` (later wins; the
    environment over both files), and list *every* problem, one line each naming its variable:
    malformed values (unknown choices, bad JSON, out of range), what ``service`` requires and
    lacks (``REQUIRED_BY_SERVICE``), insecure switches refused in production. A malformed value
    is replaced by its default so the rest can still be checked; the settings returned are for
    reading harmless values (``DFM_DATA_DIR``) when there are problems, never for running."""
    problems: list[str] = []
    replaced: dict[str, Any] = {}
    files = tuple(f for f in (DOT_ENV, env_file) if f)
    settings: Settings | None = None
    for _ in range(len(Settings.model_fields)):  # each round replaces at least one field
        try:
            settings = Settings(_env_file=files, **{**overrides, **replaced})
            break
        except ValidationError as exc:
            fresh = False
            for error in exc.errors():
                name = _field_name(error)
                if name is None or name in replaced:
                    continue
                problems.append(_describe(error))
                replaced[name] = Settings.model_fields[name].get_default(call_default_factory=True)
                fresh = True
            if not fresh:  # an error no default clears (not expected): report it as it is
                problems += [_describe(e) for e in exc.errors() if _field_name(e) is None]
                break
    if settings is None:
        return Settings.model_construct(), problems or ["the configuration is invalid"]
    if service is not None:
        wanted = [n for n in REQUIRED_BY_SERVICE.get(service, ()) if n not in replaced]
        problems += settings.missing(*wanted)
    problems += settings.insecure_problems()
    return settings, problems


def load_settings(env_file: str | None = None, *, service: str | None = None, **overrides: Any) -> Settings:
    """Build ``Settings`` (see :func:`collect_settings`) or raise ``ConfigError`` listing every
    problem. A production configuration with an insecure switch it does not accept explicitly
    is refused here, so every entry point refuses it the same way."""
    settings, problems = collect_settings(env_file, service=service, **overrides)
    if problems:
        raise ConfigError(*problems)
    return settings
