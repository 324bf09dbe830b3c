"""Secrets out of everything medattack writes or prints: API keys by value, and credentials carried in URLs.

A base URL may hold credentials (`http://user:pass@host/v1`, `...?api_key=...`, a signed `?sig=`). Wherever a
URL is recorded (run.json, a stage's config.json, a judge's name in summary.json) or told (an error in
failures.jsonl, on the console), its user-info becomes `[REDACTED]@` and the value of every query parameter
whose name looks secret (key, token, secret, password, signature, auth, credential, session) becomes
`[REDACTED]`. An API's base URL may not carry credentials at all (`credentials_in`: the config refuses it, naming
api_key_env); the CLI's log handler redacts every record (`RedactingFilter`), the HTTP library's included.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

REDACTED = "[REDACTED]"
SECRET_PARAMETER = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session|cookie", re.I)
URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.I)


def redact_url(url: str) -> str:
    """`url` without the credentials it carries (user-info, secret-looking query values)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # not a URL after all (a bad port): say nothing of it
        return REDACTED
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    if parts.username or parts.password:
        netloc = f"{REDACTED}@{netloc}"
    query = "&".join(f"{name}={REDACTED}" if SECRET_PARAMETER.search(name) else
                     (f"{name}={value}" if value or "=" in raw else name)
                     for raw in parts.query.split("&") if raw
                     for name, _, value in [raw.partition("=")])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(text: str) -> str:
    """`text` with every URL in it redacted (redact_url)."""
    return URL.sub(lambda m: redact_url(m.group()), text)


def redact_record(value: Any) -> Any:
    """A JSON-like record (a stage's settings) with every URL in its strings redacted, at any depth."""
    if isinstance(value, str):
        return redact_urls(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact_record(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_record(item) for item in value]
    return value


def credentials_in(url: str) -> list[str]:
    """What in `url` is a credential: its user-info ("user:password@") and its secret-looking query parameters."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = ["user-info"] if parts.username or parts.password else []
    except ValueError:
        return []
    return found + [name for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                    if SECRET_PARAMETER.search(name)]


class RedactingFilter(logging.Filter):
    """A handler's filter that redacts every URL of a record's message (and its arguments) before it is shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_urls(message), ()
        return True
