"""Settings: one module, driven by environment variables, with embedded development defaults.

With no DATABASE_URL / REDIS_URL set, the project talks to the embedded PostgreSQL and Redis that
`deepseek_web.services` starts under the data dir (unix sockets only, so nothing collides with
servers already running on the machine's standard ports).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from deepseek_web.services.paths import (
    PG_APP_ROLE,
    PG_OWNER_ROLE,
    celery_broker_url,
    data_dir,
    embedded_database_settings,
    embedded_redis_url,
)
from deepseek_web.services.secrets_files import (
    audit_hmac_key_path,
    pg_password_path,
    read_secret,
    secret_key_path,
)

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else int(raw)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json(name: str, default: object) -> object:
    """A JSON value; a malformed one stops start-up with the variable's name, not a stack trace later."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None


def database_from_url(url: str) -> dict[str, object]:
    """A Django DATABASES entry from a postgresql:// URL (host may be a socket dir in ?host=)."""
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": query.pop("host", parsed.hostname or ""),
        "PORT": str(parsed.port or ""),
        "OPTIONS": query,
    }


DATA_DIR = data_dir()
DEBUG = env_bool("DEBUG", True)
# The only key that works without configuration, for development; production refuses it below.
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-in-production"
KEY_FILES = {"SECRET_KEY": secret_key_path(DATA_DIR), "AUDIT_HMAC_KEY": audit_hmac_key_path(DATA_DIR)}


def key_problem(name: str, key: str, *, separate_from: str = "") -> str:
    """Why ``key`` may not serve in production; empty when it may.

    Django's own rule for SECRET_KEY (``check --deploy``: at least 50 characters, 5 distinct ones,
    not a `startproject` placeholder), applied to every key; and a key that must be separate may
    neither equal nor contain the other one.
    """
    remedy = (f"set {name} to a random value of at least {SECRET_KEY_MIN_LENGTH} characters "
              "(python -c 'import secrets; print(secrets.token_urlsafe(64))'), or leave it unset and let "
              f"`./dsw run` generate {KEY_FILES[name]}")
    if not key:
        return f"{name} is not set: {remedy}."
    if key == DEV_SECRET_KEY:
        return f"{name} is the public development default: {remedy}."
    if (len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
            or key.startswith(SECRET_KEY_INSECURE_PREFIX)):
        return (f"{name} is too weak (fewer than {SECRET_KEY_MIN_LENGTH} characters or "
                f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} distinct ones, or Django's insecure placeholder): {remedy}.")
    if separate_from and (separate_from in key or key in separate_from):
        return f"{name} must be a separate key, not SECRET_KEY nor made from it: {remedy}."
    return ""


# The environment first, then the files `./dsw run` generates in the data dir on its first start.
SECRET_KEY = os.environ.get("SECRET_KEY") or read_secret(KEY_FILES["SECRET_KEY"]) or DEV_SECRET_KEY
# Keys the audit hash chain. Keep it outside the database (and its backups): whoever holds it
# could rewrite history consistently. Changing it makes every existing chain fail verification.
# A separate key: SECRET_KEY signs cookies and so is used everywhere, this one only for the chain.
AUDIT_HMAC_KEY = (os.environ.get("AUDIT_HMAC_KEY") or read_secret(KEY_FILES["AUDIT_HMAC_KEY"])
                  or ("audit:" + SECRET_KEY if DEBUG else ""))
if not DEBUG:
    # Refuse to start rather than warn in `check --deploy`: with a public key anyone can forge
    # sessions and rewrite the audit trail with a chain that still verifies.
    for _problem in (key_problem("SECRET_KEY", SECRET_KEY),
                     key_problem("AUDIT_HMAC_KEY", AUDIT_HMAC_KEY, separate_from=SECRET_KEY)):
        if _problem:
            raise ImproperlyConfigured(_problem)

AUDIT_DEFAULT_RETENTION_DAYS = env_int("AUDIT_DEFAULT_RETENTION_DAYS", 180)
# The shortest retention the platform may set for a chain (owners can only lengthen theirs).
AUDIT_MIN_RETENTION_DAYS = env_int("AUDIT_MIN_RETENTION_DAYS", 180)
# Each verification appends the verified heads here, outside the database (see audit/anchors.py).
AUDIT_ANCHOR_FILE = Path(env_str("AUDIT_ANCHOR_FILE", str(DATA_DIR / "audit" / "anchors.jsonl")))
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "tenants",
    "audit",
    "console",
    "knowledge",
    "chat",
    "inference",
    "openai_api",
]

MIDDLEWARE = [
    # First: every error under /api/ and /v1/ in that API's JSON format, whoever answered it.
    "deepseek_web.api_errors.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "tenants.middleware.TenantMiddleware",
    # Last, as django-axes requires: it turns a lockout into its response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "deepseek_web.urls"
ASGI_APPLICATION = "deepseek_web.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant",
            ],
        },
    }
]

# Two database roles (see tenants/rls.py): the product connects as the app role, which owns no
# table and cannot bypass row-level security; `migrate` and `flush` switch to the owner role.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
    _owner = database_from_url(os.environ.get("DATABASE_OWNER_URL", DATABASE_URL))
    DATABASE_OWNER = {"USER": _owner["USER"], "PASSWORD": _owner["PASSWORD"]}
else:
    # The embedded server asks every role for its password (scram-sha-256); ensure_postgres
    # generates them into the data dir's secrets/ on the first start.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            **embedded_database_settings(DATA_DIR, user=PG_APP_ROLE,
                                         password=read_secret(pg_password_path(DATA_DIR, PG_APP_ROLE)) or ""),
        }
    }
    DATABASE_OWNER = {"USER": PG_OWNER_ROLE,
                      "PASSWORD": read_secret(pg_password_path(DATA_DIR, PG_OWNER_ROLE)) or ""}
# DB_NAME picks another database on the same server (the browser tests point daphne at theirs).
DATABASES["default"]["NAME"] = env_str("DB_NAME", str(DATABASES["default"]["NAME"]))
DB_APP_ROLE = str(DATABASES["default"]["USER"])
DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# A connection pool per process (psycopg_pool, through Django): each database step takes a
# connection and gives it back, so hundreds of worker threads and daphne's handshakes share a few
# connections instead of holding one each (a turn never holds one while it streams: see
# tenants.rls.tenant_step). DB_POOL_MAX_SIZE=0 turns pooling off (then CONN_MAX_AGE applies).
# `./dsw run` checks the processes' sum against PostgreSQL's max_connections (cli.database_capacity_check).
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 10)
# How long a step waits for a free pooled connection before it fails with a clear error.
DB_POOL_TIMEOUT_S = env_int("DB_POOL_TIMEOUT_S", 30)
if DB_POOL_MAX_SIZE > 0:
    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured("CONN_MAX_AGE must be 0 with a connection pool (set DB_POOL_MAX_SIZE=0 to keep "
                                   "persistent connections instead)")
    DATABASES["default"]["OPTIONS"] = {
        **dict(DATABASES["default"].get("OPTIONS") or {}),  # type: ignore[call-overload]  # an OPTIONS dict
        "pool": {"min_size": 1, "max_size": DB_POOL_MAX_SIZE, "timeout": DB_POOL_TIMEOUT_S},
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# DSW_REDIS_DB picks another logical database on the embedded server (the test command uses 1).
REDIS_URL = os.environ.get("REDIS_URL") or embedded_redis_url(DATA_DIR, env_int("DSW_REDIS_DB", 0))

# The process-wide Redis clients (deepseek_web.redis_client): threads beyond the pool's size wait
# up to the timeout for a connection rather than fail.
REDIS_POOL_MAX_SIZE = env_int("REDIS_POOL_MAX_SIZE", 64)
# WebSocket handshakes one web process sets up at once; more are refused at once and the page
# retries (deepseek_web/websocket_admission.py). 0: no limit.
WEBSOCKET_HANDSHAKES_MAX = env_int("WEBSOCKET_HANDSHAKES_MAX", 48)
REDIS_POOL_TIMEOUT_S = env_int("REDIS_POOL_TIMEOUT_S", 20)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 defaults to a 5 s socket timeout, which races channels_redis' own 5 s
        # blocking pops: give blocking reads room.
        # redis-py 8 also caps a pool at 100 connections, failing the next command: a storm of
        # handshakes (each one a group_add) needs more at once.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 2000}]},
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "dsw",
    }
}

# Celery: two queues. `gpu` holds the models (one engine per worker process, shared by its
# threads); `ingest` parses documents.
CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "ingest"
CELERY_TASK_ROUTES = {
    # Its own queue and solo worker: the sweep must run when no gpu worker does.
    "chat.tasks.sweep_stale_turns": {"queue": "maintenance"},
    "chat.tasks.*": {"queue": "gpu"},
    # Embedding needs the models, so it runs where they are loaded; parsing and chunking do not.
    "knowledge.tasks.embed_document": {"queue": "gpu"},
    "knowledge.tasks.*": {"queue": "ingest"},
    "audit.tasks.*": {"queue": "ingest"},
}
# A turn whose worker dies is redelivered once (see chat.turns.message_generate).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Expires: sweeps missed while no maintenance worker ran are dropped, not run in a burst.
    "chat-sweep-stale-turns": {"task": "chat.tasks.sweep_stale_turns", "schedule": 5.0,
                               "options": {"expires": 4}},
    "audit-verify-chains": {"task": "audit.tasks.verify_chains", "schedule": 3600.0},
    "audit-prune": {"task": "audit.tasks.prune_expired", "schedule": 24 * 3600.0},
    # Each source has its own interval (hourly by default); this only looks for the due ones.
    "knowledge-sync-due-sources": {"task": "knowledge.tasks.sync_due_sources", "schedule": 300.0},
    "knowledge-sweep-stale-documents": {"task": "knowledge.tasks.sweep_stale_documents", "schedule": 300.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First, so a locked-out (username, IP) pair is refused before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Lock out a user name only from the address that keeps failing: an attacker elsewhere cannot
# lock the real user out of their own account.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("LOGIN_LOCKOUT_HOURS", 1)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
# The client address is REMOTE_ADDR, which asgi.py takes from X-Forwarded-For only when the
# connection comes from one of TRUSTED_PROXIES: a header any client can send is never read here.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
# Addresses or networks of the reverse proxies in front of daphne (comma-separated), whose
# X-Forwarded-For and X-Forwarded-Proto are believed. Empty: none, daphne faces the clients.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
# daphne serves /static/ itself in the embedded set-up; production puts a CDN or proxy in front.
SERVE_STATIC = env_bool("SERVE_STATIC", True)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Production (DEBUG off) is served over TLS, directly or behind a proxy that says so.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Content security policy: only our own scripts, no inline script, so model output that
# somehow slipped past the sanitizer still could not run.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: the browsable API's HTML is not part of the documented API (and a client that
    # accepts only HTML gets a 406 in JSON).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# The REST API's OpenAPI schema, served at /api/schema/ to signed-in users.
SPECTACULAR_SETTINGS = {
    "TITLE": "DeepSeek Web REST API",
    "DESCRIPTION": "Knowledge bases and their documents. Authenticated by the session cookie; unsafe "
                   "methods also need the CSRF token in the X-CSRFToken header.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
}

# Models. MODEL_PATH: a transformers folder; empty means the bundled SmolLM2, converted once
# from its GGUF into MODELS_DIR.
MODELS_DIR = Path(env_str("MODELS_DIR", str(DATA_DIR / "models")))
MODEL_PATH = env_str("MODEL_PATH", "")
MODEL_DEVICE = env_str("MODEL_DEVICE", "cpu")
MODEL_DTYPE = env_str("MODEL_DTYPE", "")
MODEL_BATCHING = env_str("MODEL_BATCHING", "auto")
# The engine's capacity: concurrent requests, and (static batching) each request's context in
# tokens and the KV cache's memory. 0 means automatic: the model's context, at most 4096 on a GPU
# and 2048 on the CPU; 80% of free GPU memory less 4 GiB, or 1 GiB on the CPU (inference.engine).
MODEL_MAX_BATCH = env_int("MODEL_MAX_BATCH", 16)
MODEL_MAX_CONTEXT = env_int("MODEL_MAX_CONTEXT", 0)
MODEL_KV_CACHE_MB = env_int("MODEL_KV_CACHE_MB", 0)
# Weight-only quantization of the chat model's linear layers at load: "none", "int8" (about half
# of bf16's weight memory) or "int4" (about a quarter); see inference/engine/quantization.py.
MODEL_QUANTIZATION = env_str("MODEL_QUANTIZATION", "none").strip().lower() or "none"
if MODEL_QUANTIZATION not in {"none", "int8", "int4"}:
    raise ValueError(f"MODEL_QUANTIZATION must be none, int8 or int4, not {MODEL_QUANTIZATION!r}")
# The gpu worker's CUDA allocator settings, exported as PYTORCH_CUDA_ALLOC_CONF before torch loads
# (inference.runtime.apply_cuda_alloc_conf). Expandable segments keep growing and shrinking KV
# caches from fragmenting GPU memory. An allocator setting already in the environment wins; empty
# leaves torch's default.
MODEL_CUDA_ALLOC_CONF = env_str("MODEL_CUDA_ALLOC_CONF", "expandable_segments:True")
EMBEDDING_MODEL_PATH = env_str("EMBEDDING_MODEL_PATH", "")
# OpenAI-compatible servers (vLLM, SGLang, TGI, a cloud API) a turn may be sent to, as a JSON list:
# [{"name": "vllm-a", "base_url": "http://vllm:8000/v1", "model": "deepseek-chat", "api_key": "...",
#   "timeouts": {"connect_s": 5, "first_token_s": 60, "idle_s": 30, "total_s": 600}, "retries": 2}].
# "api_key_env" may name an environment variable holding the key instead. Empty: the local model
# serves every turn. Sensitive tenants and knowledge bases always stay local (inference.routing).
INFERENCE_BACKENDS = env_json("INFERENCE_BACKENDS", [])
# Routing ranks remote backends by an average of recent times to first token, kept in Redis so all
# workers share it: this weight for the newest sample, forgotten after this long without one.
INFERENCE_LATENCY_WEIGHT = float(env_str("INFERENCE_LATENCY_WEIGHT", "0.3"))
INFERENCE_LATENCY_TTL_S = env_int("INFERENCE_LATENCY_TTL_S", 900)

# Knowledge bases. Uploaded files are kept under generated names in KNOWLEDGE_STORAGE_DIR.
KNOWLEDGE_STORAGE_DIR = Path(env_str("KNOWLEDGE_STORAGE_DIR", str(DATA_DIR / "knowledge")))
KNOWLEDGE_MAX_FILE_MB = env_int("KNOWLEDGE_MAX_FILE_MB", 50)
# The parser's child process: address-space, CPU-time and wall-clock limits.
KNOWLEDGE_PARSE_MEMORY_MB = env_int("KNOWLEDGE_PARSE_MEMORY_MB", 1024)
KNOWLEDGE_PARSE_CPU_S = env_int("KNOWLEDGE_PARSE_CPU_S", 30)
KNOWLEDGE_PARSE_TIMEOUT_S = env_int("KNOWLEDGE_PARSE_TIMEOUT_S", 45)
KNOWLEDGE_EMBED_BATCH = env_int("KNOWLEDGE_EMBED_BATCH", 128)
# Server folders a knowledge admin may sync from (colon-separated). Empty: folder sources are off,
# because a folder path typed in the browser must never reach arbitrary files of the server.
KNOWLEDGE_FOLDER_ROOTS = [Path(p) for p in env_str("KNOWLEDGE_FOLDER_ROOTS", "").split(":") if p]
# URL sources may fetch intranet addresses only when allowed (server-side request forgery).
KNOWLEDGE_URL_ALLOW_PRIVATE = env_bool("KNOWLEDGE_URL_ALLOW_PRIVATE", False)
# Networks URL sources may fetch although they are not public (comma-separated CIDRs), e.g. an
# intranet wiki's 10.1.0.0/16; KNOWLEDGE_URL_ALLOW_PRIVATE=1 allows every address.
KNOWLEDGE_URL_ALLOWED_NETWORKS = env_list("KNOWLEDGE_URL_ALLOWED_NETWORKS", [])
# The DNS servers URL sources are resolved with (comma-separated IPs, optional :port); empty: the
# system's. The tests point it at their own rebinding resolver.
KNOWLEDGE_URL_NAMESERVERS = env_list("KNOWLEDGE_URL_NAMESERVERS", [])

# Request bodies, capped by deepseek_web.web_server before anything parses them (413 above the
# limit). The default is Django's own DATA_UPLOAD_MAX_MEMORY_SIZE; uploads get one file of
# KNOWLEDGE_MAX_FILE_MB plus room for the form around it.
REQUEST_MAX_BODY_BYTES = env_int("REQUEST_MAX_BODY_BYTES", 2_621_440)
REQUEST_UPLOAD_MAX_BODY_BYTES = env_int("REQUEST_UPLOAD_MAX_BODY_BYTES", (KNOWLEDGE_MAX_FILE_MB + 4) * 1024 * 1024)
# Regular expressions of the paths that take uploads.
REQUEST_UPLOAD_PATHS = env_list("REQUEST_UPLOAD_PATHS", [r"^/knowledge/\d+/upload/$",
                                                         r"^/api/v1/knowledge-bases/\d+/documents/$"])

# A document stuck in one step this long (its worker died) is failed with a reason.
KNOWLEDGE_STALE_S = env_int("KNOWLEDGE_STALE_S", 900)
# Retrieval: candidates from each search, passages put in the prompt, HNSW search breadth.
KNOWLEDGE_CANDIDATES = env_int("KNOWLEDGE_CANDIDATES", 30)
KNOWLEDGE_TOP_K = env_int("KNOWLEDGE_TOP_K", 5)
KNOWLEDGE_HNSW_EF_SEARCH = env_int("KNOWLEDGE_HNSW_EF_SEARCH", 64)
# Passages whose cosine similarity is this far below the best one are left out of the prompt.
# 0.20: on bench/retrieval_quality.py it drops the answering passage for 1 question in 139
# (0.15: 8) while still trimming the top 5 to 3.5 passages on average.
KNOWLEDGE_RELEVANCE_MARGIN = float(env_str("KNOWLEDGE_RELEVANCE_MARGIN", "0.20"))
# A sentence-transformers CrossEncoder folder; empty: our embedding reranker (knowledge.rerank).
KNOWLEDGE_RERANKER_PATH = env_str("KNOWLEDGE_RERANKER_PATH", "")

# Chat limits.
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 8000)
CHAT_MAX_NEW_TOKENS = env_int("CHAT_MAX_NEW_TOKENS", 512)
CHAT_HISTORY_MESSAGES = env_int("CHAT_HISTORY_MESSAGES", 12)
# Redis Stream of a finished turn is kept this long so late reconnects can still replay it.
CHAT_STREAM_TTL_S = env_int("CHAT_STREAM_TTL_S", 3600)
# A turn with no progress for this long is considered orphaned by a dead worker (a turn that
# records no owning worker; one that does is judged by its owner's heartbeat, chat.liveness).
CHAT_STALE_TURN_S = env_int("CHAT_STALE_TURN_S", 300)
# A gpu worker's heartbeat key lives this long; it is refreshed every 2 s (chat.liveness).
CHAT_WORKER_HEARTBEAT_TTL_S = env_int("CHAT_WORKER_HEARTBEAT_TTL_S", 6)
# A streaming turn whose owner has no heartbeat and whose row was not touched for this long is
# redelivered (the row is touched every 5 s while the turn runs).
CHAT_ORPHAN_GRACE_S = env_int("CHAT_ORPHAN_GRACE_S", 8)
# A queued turn older than this whose task is no longer queued is requeued once, then failed.
CHAT_PENDING_CHECK_S = env_int("CHAT_PENDING_CHECK_S", 20)
# With no gpu worker seen for this long, queued turns this old fail: "no model worker is available".
CHAT_NO_WORKER_S = env_int("CHAT_NO_WORKER_S", 45)
# A turn's heartbeats, chunk writes and final save retry through outages this long (chat.outages).
CHAT_OUTAGE_RETRY_S = env_int("CHAT_OUTAGE_RETRY_S", 45)
# Fair sharing (chat.dispatch): "fair" queues turns per tenant and user; "fifo" sends each turn
# straight to the gpu queue (the old behaviour, kept for bench/fairness.py's comparison).
CHAT_DISPATCH = env_str("CHAT_DISPATCH", "fair")
# Turns of one tenant that run at once; keep it below the engine's slots so others always get one.
CHAT_MAX_RUNNING_PER_TENANT = env_int("CHAT_MAX_RUNNING_PER_TENANT", 6)
# Turns waiting or running at once; a submit beyond them is refused with a clear message. 0: no cap.
CHAT_MAX_IN_FLIGHT_PER_USER = env_int("CHAT_MAX_IN_FLIGHT_PER_USER", 10)
CHAT_MAX_IN_FLIGHT_PER_TENANT = env_int("CHAT_MAX_IN_FLIGHT_PER_TENANT", 200)
# Open chat WebSockets; one more is closed with code 4429. 0: no cap.
CHAT_MAX_STREAMS_PER_USER = env_int("CHAT_MAX_STREAMS_PER_USER", 20)
CHAT_MAX_STREAMS_PER_TENANT = env_int("CHAT_MAX_STREAMS_PER_TENANT", 1000)
# /v1 token buckets (openai_api.ratelimit): requests per minute and burst per API key, and for
# requests with a wrong key, per client address. 0 per minute: no limit.
API_RATE_PER_MINUTE = env_int("API_RATE_PER_MINUTE", 120)
API_RATE_BURST = env_int("API_RATE_BURST", 30)
API_BAD_KEY_RATE_PER_MINUTE = env_int("API_BAD_KEY_RATE_PER_MINUTE", 20)
API_BAD_KEY_RATE_BURST = env_int("API_BAD_KEY_RATE_BURST", 10)
CHAT_SYSTEM_PROMPT = env_str(
    "CHAT_SYSTEM_PROMPT",
    "You are DeepSeek Web, a helpful assistant for employees of this company. Answer concisely.",
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
        # transformers' batching manager logs every start and stop at INFO.
        "ContinuousBatchingLogger": {"level": "WARNING"},
    },
}
