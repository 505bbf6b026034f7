"""Settings, read from the environment with embedded defaults (see README: Configuration)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("BILEVEL_DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

PRODUCTION = os.environ.get("BILEVEL_ENV", "development") == "production"
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"


def _secret_key() -> str:
    """Use SECRET_KEY if given; in development generate one once and keep it under DATA_DIR."""
    key = os.environ.get("SECRET_KEY", "")
    if PRODUCTION:
        if len(key) < 50 or key.startswith("django-insecure") or len(set(key)) < 5:
            raise ImproperlyConfigured(
                "BILEVEL_ENV=production needs SECRET_KEY set to a random value of at least 50 characters."
            )
        return key
    if key:
        return key
    key_file = DATA_DIR / "secret_key"
    # Never through a symbolic link: the launcher reads this as root before it gives root up, and the
    # unprivileged account owns DATA_DIR, so a planted link must not make root create or read elsewhere.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(64))
    try:
        with os.fdopen(os.open(key_file, os.O_RDONLY | os.O_NOFOLLOW)) as handle:
            return handle.read().strip()
    except OSError as error:
        raise ImproperlyConfigured(f"{key_file} must be a regular file, not a symbolic link: {error}") from None


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
if PRODUCTION:
    SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "1") == "1"
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "ninja",  # its templates and static files: Swagger UI for /api/docs, served locally
    "runs",
    "mechanisms",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "bilevel_site.urls"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

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
                "mechanisms.context_processors.review_queue",
                "mechanisms.context_processors.level2_isolation",
                "runs.web.context_processors.backend_status",
            ],
        },
    },
]

ASGI_APPLICATION = "bilevel_site.asgi.application"
WSGI_APPLICATION = "bilevel_site.wsgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'bilevel.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
# A connection that broke (a restarted database, a killed backend) is replaced instead of failing.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# How long a worker waits on an unreachable database before a call fails (and is retried), instead
# of the kernel's quarter of an hour: a partition or a restart must not freeze a worker.
DATABASE_TIMEOUT_SECONDS = int(os.environ.get("BILEVEL_DB_TIMEOUT_SECONDS", "10"))
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"] = {
        "connect_timeout": DATABASE_TIMEOUT_SECONDS,
        "keepalives": 1,
        "keepalives_idle": DATABASE_TIMEOUT_SECONDS,
        "keepalives_interval": max(1, DATABASE_TIMEOUT_SECONDS // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": DATABASE_TIMEOUT_SECONDS * 1000,
        # A worker cut off inside a transaction must not hold the run's row lock for ever.
        "options": f"-c idle_in_transaction_session_timeout={DATABASE_TIMEOUT_SECONDS * 3 * 1000}",
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes; IMMEDIATE avoids lock upgrades failing.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    test_name = os.environ.get("BILEVEL_TEST_SQLITE")
    if test_name:
        # Tests start real servers and workers in other processes: they need a file, not :memory:.
        DATABASES["default"]["TEST"] = {"NAME": test_name}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise serves from finders; an empty root keeps it quiet
NODE_MODULES = BASE_DIR / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/htmx", NODE_MODULES / "htmx.org" / "dist"),
    ("vendor/chartjs", NODE_MODULES / "chart.js" / "dist"),
]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Redis: broker, result store and channel layer. The launcher starts an embedded Redis and
# exports REDIS_URL to its children when none is configured.
# Commands run beside a launcher (manage.py start_run, ...) find its embedded Redis in REDIS_URL_FILE.
REDIS_URL_FILE = DATA_DIR / "redis.url"
# Written by the launcher while it restarts a dead part; the pages show it (runs.web.context_processors).
BACKEND_STATUS_FILE = DATA_DIR / "backend-status.json"
REDIS_URL = (
    os.environ.get("REDIS_URL")
    or (REDIS_URL_FILE.read_text().strip() if REDIS_URL_FILE.exists() else "")
    or "redis://127.0.0.1:6379/0"
)

# Timeouts on every Redis connection, for the same reason as the database's.
REDIS_TIMEOUT_SECONDS = float(os.environ.get("BILEVEL_REDIS_TIMEOUT_SECONDS", "10"))
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # Longer than the layer's own 5 s blocking receive, which must not time out as an error.
            "hosts": [{"address": REDIS_URL, "socket_timeout": max(REDIS_TIMEOUT_SECONDS, 10.0),
                       "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}],
            "capacity": 1500,
            "expiry": 30,
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": max(REDIS_TIMEOUT_SECONDS, 5.0),  # longer than the worker's 1 s blocking pop
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_keepalive": True,
    "health_check_interval": REDIS_TIMEOUT_SECONDS,
}
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_TIMEOUT_SECONDS
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_TIMEOUT_SECONDS
# Steps are sent to the queue their run's device needs (runs/engine/devices.py); this is the default.
CELERY_TASK_ROUTES = {
    "runs.tasks.run_step": {"queue": "train"},
    "runs.tasks.run_research_session": {"queue": "research"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "reap-expired-leases": {"task": "runs.tasks.reap_expired_leases",
                            "schedule": float(os.environ.get("BILEVEL_REAPER_SECONDS", "20"))},
    "expire-reviews": {"task": "runs.tasks.expire_reviews", "schedule": 30.0},
}
CELERY_RESULT_EXPIRES = 3600

# Search engine defaults.
STEP_LEASE_SECONDS = int(os.environ.get("BILEVEL_LEASE_SECONDS", "60"))
# The lease's holder renews it this often; a holder silent for five beats is taken over (runs/engine/lease.py).
STEP_HEARTBEAT_SECONDS = float(os.environ.get("BILEVEL_LEASE_HEARTBEAT_SECONDS", "2"))
# A holder whose database is away retries its commit this long (the fence then decides) before giving up.
STEP_COMMIT_RETRY_SECONDS = float(os.environ.get("BILEVEL_COMMIT_RETRY_SECONDS", "600"))
# A queued step task missing from the broker this long (Redis lost its data) is queued again.
LOST_TASK_GRACE_SECONDS = float(os.environ.get("BILEVEL_LOST_TASK_GRACE_SECONDS", "10"))
# Workers renew their row (device, queues) this often; one silent for WORKER_SEEN_SECONDS is gone.
WORKER_BEAT_SECONDS = float(os.environ.get("BILEVEL_WORKER_BEAT_SECONDS", "10"))
WORKER_SEEN_SECONDS = float(os.environ.get("BILEVEL_WORKER_SEEN_SECONDS", "60"))
# Tests only: spread each surrogate evaluation over this many real seconds, reporting progress like a
# training, so a step is in flight long enough to be cut off (tests/hosts). 0 = answer at once.
SURROGATE_PACE_SECONDS = float(os.environ.get("BILEVEL_SURROGATE_PACE_SECONDS", "0"))
TRAINER_THREADS = int(os.environ.get("BILEVEL_TRAINER_THREADS", "2"))
TRAINER_WORKDIR = DATA_DIR / "trainings"
# An operator cap on the hard timeout of one training (seconds; unset = the budget-derived default).
TRAINER_TIMEOUT_SECONDS = float(os.environ.get("BILEVEL_TRAINER_TIMEOUT_SECONDS", "0")) or None
# This worker's training text: a directory of .txt / .parquet files (trainer.corpus_dir); unset = the
# embedded Shakespeare plays. A path on the worker's own disk, so it is a worker setting.
TRAINER_CORPUS_DIR = os.environ.get("BILEVEL_CORPUS_DIR") or None

# LLM defaults (an experiment may override base URL and model).
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "")
LLM_API_KEY = os.environ.get("LLM_API_KEY", "")
LLM_MODEL = os.environ.get("LLM_MODEL", "")
LLM_TIMEOUT_SECONDS = float(os.environ.get("LLM_TIMEOUT_SECONDS", "60"))
# The shortest timeout is LLM_TIMEOUT_SECONDS; measured slow endpoints (a CPU model) get up to this.
LLM_MAX_TIMEOUT_SECONDS = float(os.environ.get("LLM_MAX_TIMEOUT_SECONDS", "1800"))
# The agent the experiment form starts with: "llm" when bootstrap.py up --local-llm serves a local model.
DEFAULT_AGENT_BACKEND = os.environ.get("BILEVEL_DEFAULT_AGENT", "builtin")
# Every prompt is built to fit this window (tokens, prompt and reply together); 8192 suits small local models.
LLM_CONTEXT_TOKENS = int(os.environ.get("LLM_CONTEXT_TOKENS", "8192"))
LLM_RETRY_BACKOFF_SECONDS = float(os.environ.get("LLM_RETRY_BACKOFF_SECONDS", "1.0"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # One line per LLM request is noise next to the LLMCall rows that record every call.
    "loggers": {"httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
}
