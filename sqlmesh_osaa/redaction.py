"""Keeping credentials out of messages and logs.

Three kinds of secret could reach text the package writes: the password of a URL
(``http://user:PASSWORD@host``), AWS credentials (the secret key and the session token,
which botocore's DEBUG loggers print in request headers and canonical requests), and any
value the package handed to another system as a secret (DuckDB's S3 secret). This module
masks all three; :func:`install_log_redaction` puts the masking on the loggers that print
request headers, so ``sqlmesh --debug`` logs stay useful without holding a token.

It imports nothing of the package: every layer, the exceptions included, may use it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Environment variables whose values are credentials wherever they appear.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PGPASSWORD")
# Libraries whose DEBUG loggers print request headers (X-Amz-Security-Token), signing material or URLs.
REDACTED_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "sqlmesh_osaa")
_KNOWN_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.hooks", "urllib3.connectionpool")
# Shorter values are more likely words than secrets (test fixtures use "testing"); URL forms are masked anyway.
_MIN_SECRET_LENGTH = 8

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s/@'\"<>]+)@")
_TOKEN_HEADER = re.compile(
    r"(?P<name>x-amz-security-token|authorization|x-amz-credential|x-amz-signature)(?P<sep>['\"]?\s*[:=]\s*b?['\"]?)"
    r"(?P<value>[^'\"\s,&}\n]+)",
    re.IGNORECASE,
)
_known: set[str] = set()
_known_lock = threading.Lock()


def register_secret(*values: str | None) -> None:
    """Remember values handed out as secrets, so :func:`redact` masks them wherever they appear."""
    with _known_lock:
        _known.update(value for value in values if value and len(value) >= _MIN_SECRET_LENGTH)


def _secrets() -> Iterable[str]:
    from_env = (os.environ.get(name) for name in SECRET_ENV_VARS)
    with _known_lock:
        values = set(_known)
    values.update(value for value in from_env if value and len(value) >= _MIN_SECRET_LENGTH)
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with URL passwords, signing headers and every known secret value masked."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{_masked_userinfo(m['userinfo'])}@", text)
    text = _TOKEN_HEADER.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    for value in _secrets():
        text = text.replace(value, MASK)
    return text


def _masked_userinfo(userinfo: str) -> str:
    user, has_password, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if has_password else MASK


def url_userinfo(url: str) -> bool:
    """Whether ``url`` carries a user name or password (``scheme://user:pw@host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return parts.username is not None or parts.password is not None


def without_userinfo(url: str) -> str:
    """``url`` with its user name and password removed, for display."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text, so the traceback they print is the redacted one.
            record.exc_text = redact(_TRACEBACK_FORMATTER.formatException(record.exc_info))
        return True


_TRACEBACK_FORMATTER = logging.Formatter()
_filter = RedactingFilter()


def install_log_redaction(libraries: Iterable[str] = REDACTED_LIBRARIES) -> None:
    """Mask secrets in every record of the loggers of ``libraries`` (botocore and its stack); idempotent.

    A filter on a logger sees only records created by that logger, not those of its
    children, so every logger of those libraries existing now (they are created when their
    module is imported) and the known request loggers each get one. Call it again after
    importing more of a library; the S3 client factory does.
    """
    prefixes = tuple(libraries)
    existing = [name for name in list(logging.Logger.manager.loggerDict) if name.split(".")[0] in prefixes]
    for name in {*prefixes, *_KNOWN_LOGGERS, *existing}:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
