"""What a provider's error may say outside the worker: its type, its HTTP status, a redacted message.

A call's error text travels far: `call.failed` events, the runs' Postgres rows, the run views
the API returns, the arbiter's prompt (a failed member is quoted to it). Provider error texts
can quote the request (litellm repeats the provider's body, which can echo the prompt or an
attached document) and sometimes carry credentials (a key in a URL's query, an `Authorization`
header, the key itself in "Incorrect API key provided: sk-..."). So the worker never publishes
`str(exc)`: `describe_error` keeps the type, the status and the start of the message with

- secrets masked: the exact values the call was made with (its `api_key`, ...), and what looks
  like one whoever sent it (`sk-...`, `Bearer ...`, `api_key=...` and other credential query
  parameters or fields, `Authorization:` and API-key headers, AWS and Google keys, JWTs, the
  password of a URL);
- any passage of `QUOTE_MIN` characters or more copied from the call's own messages (as they
  are, or escaped the way JSON or a Python repr quotes them) replaced by `QUOTED`;
- whitespace collapsed and the whole cut to `ERROR_MAX` characters.

Pure and total: no I/O, and it never raises (an exception whose `str()` fails is described by
its type). The span and the metrics of a failed call never get even this text, only the type
(`moot_member_worker.calls._observe`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence

ERROR_MAX = 300
# Copied passages this long or longer count as quoting the request: long enough that a provider's
# own wording ("Please pass an `api_key`") rarely coincides with a prompt, short enough that no
# sentence of the prompt gets through.
QUOTE_MIN = 20
# Only the start of a long message is searched for quotes: the text kept is cut far shorter.
# Secrets are masked in the whole message first, so none survives cut in half at this point.
QUOTE_WINDOW = 4000
# An exact secret shorter than this is not looked for: a placeholder key ("sk-t", "none") would
# mask ordinary words, and is no secret.
SECRET_MIN = 8

REDACTED = "[redacted]"
QUOTED = "[…quoted request…]"

_KEY_CHARS = r"A-Za-z0-9_\-*"
# Names of query parameters, form fields and JSON keys whose value is a credential.
_SECRET_NAMES = (
    r"api[_-]?key|apikey|key|access[_-]?key|secret[_-]?key|access[_-]?token|refresh[_-]?token|"
    r"id[_-]?token|auth[_-]?token|session[_-]?token|token|secret|client[_-]?secret|password|passwd|"
    r"signature|sig|x-amz-signature|x-amz-security-token|x-amz-credential|"
    r"aws[_-]?secret[_-]?access[_-]?key|aws[_-]?session[_-]?token"
)
# Headers whose value is a credential, as "Name: value", "'Name': 'value'" or "Name=value".
_SECRET_HEADERS = (
    r"authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|ocp-apim-subscription-key"
)


def _credential(m: re.Match[str]) -> str:
    """`Bearer <token>` masked, but not the prose "Bearer authentication" (a token is long or not
    all letters)."""
    token = m.group(3)
    if len(token) < 16 and token.isalpha():
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{REDACTED}"


# In order: whole headers first (their value may be "Bearer ..."), then the shapes of keys.
_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(rf"((?<![\w-])(?:{_SECRET_HEADERS})[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}}]+", re.IGNORECASE),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=\-]{8,})", re.IGNORECASE), _credential),
    # JSON or Python-dict fields: "api_key": "value"
    (
        re.compile(rf"([\"'](?:{_SECRET_NAMES})[\"']\s*:\s*)([\"'])(?:(?!\2).)*\2", re.IGNORECASE),
        rf"\1\2{REDACTED}\2",
    ),
    # query parameters and key=value pairs: ?key=value&...
    (re.compile(rf"((?<![\w-])(?:{_SECRET_NAMES})=)[^&\s\"'<>,;)]+", re.IGNORECASE), rf"\1{REDACTED}"),
    (re.compile(rf"\bsk-[{_KEY_CHARS}]{{6,}}"), REDACTED),  # OpenAI, Anthropic (sk-ant-...), ...
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), REDACTED),  # AWS key ids
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), REDACTED),  # Google API keys
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), REDACTED),  # JWTs
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE), rf"\1{REDACTED}@"),
)
# An AWS secret access key on its own: 40 characters of base64 with upper and lower case and a
# digit (a hex digest, a request id or a word has not all three).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])")
# Quotes of two messages (or of one, around an escape) with only punctuation between: one quote.
_MARKS_IN_A_ROW = re.compile(rf"{re.escape(QUOTED)}(?:\W{{0,8}}?{re.escape(QUOTED)})+")


def describe_error(
    exc: BaseException,
    *,
    secrets: Iterable[str] = (),
    request: Iterable[str] = (),
    limit: int = ERROR_MAX,
) -> str:
    """`Type (HTTP status): message` with the message redacted (`redact`), at most `limit` characters.

    `secrets` are the exact credentials the call was made with; `request` the texts of the
    messages it sent. litellm's own "litellm.Type: Type: " prefix is dropped: the type leads.
    """
    name = type(exc).__name__
    status = status_of(exc)
    head = f"{name} (HTTP {status})" if status is not None else name
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not cost the outcome
        message = ""
    message = _without_type_prefix(message, name)
    if not message:
        return head[:limit]
    return _cut(f"{head}: {redact(message, secrets=secrets, request=request)}", limit)


def redact(text: str, *, secrets: Iterable[str] = (), request: Iterable[str] = ()) -> str:
    """`text` with secrets masked and quotes of `request` replaced; whitespace collapsed, not cut.

    Only the first `QUOTE_WINDOW` characters (after masking) are kept: callers cut far shorter.
    """
    exact = _exact_secrets(secrets)
    masked = mask_secrets(text, exact)[:QUOTE_WINDOW]
    # The request is masked the same way, so a quote that had a secret in it still matches.
    quoted = _without_quotes(masked, [mask_secrets(t, exact) for t in _quoting_forms(request)])
    return _final_pass(" ".join(quoted.split()), exact)


def mask_secrets(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with the exact `secrets` and whatever looks like a credential replaced by `REDACTED`."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _AWS_SECRET.sub(_aws_secret, text)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a provider's error, when it has one (litellm's and httpx's errors do)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


# ---------------------------------------------------------------------------------------------


def _exact_secrets(secrets: Iterable[str]) -> list[str]:
    """The secrets worth looking for, longest first (a key that contains another is masked whole)."""
    return sorted({s for s in secrets if isinstance(s, str) and len(s) >= SECRET_MIN}, key=len, reverse=True)


def _aws_secret(m: re.Match[str]) -> str:
    value = m.group(0)
    mixed = (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )
    return REDACTED if mixed else value


def _without_type_prefix(message: str, name: str) -> str:
    """litellm's "litellm.RateLimitError: RateLimitError: OpenAIException - ..." without the repeats."""
    prefix = re.compile(rf"^\s*(?:litellm\.)?{re.escape(name)}:\s*")
    while (m := prefix.match(message)) is not None:
        message = message[m.end() :]
    return message.strip()


def _quoting_forms(request: Iterable[str]) -> list[str]:
    """Each request text as an error may quote it: as is, JSON-escaped (ASCII or not), repr-escaped."""
    forms: list[str] = []
    for text in request:
        if not isinstance(text, str) or len(text) < QUOTE_MIN:
            continue
        variants = {
            text,
            json.dumps(text)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
            repr(text)[1:-1],
        }
        forms.extend(variants)
    return forms


def _without_quotes(text: str, request: list[str]) -> str:
    """`text` with every run of characters covered by a `QUOTE_MIN`-long passage of `request` replaced.

    Every `QUOTE_MIN`-character window of `text` is looked up among those of the request texts:
    linear in the lengths (a set of the text's windows, one pass over each request text).
    """
    n = QUOTE_MIN
    if len(text) < n or not request:
        return text
    windows = {text[i : i + n] for i in range(len(text) - n + 1)}
    found: set[str] = set()
    for source in request:
        for j in range(len(source) - n + 1):
            window = source[j : j + n]
            if window in windows:
                found.add(window)
        if len(found) == len(windows):
            break
    if not found:
        return text
    covered = [False] * len(text)
    for i in range(len(text) - n + 1):
        if text[i : i + n] in found:
            covered[i : i + n] = [True] * n
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(QUOTED)
        else:
            out.append(text[i])
            i += 1
    return _MARKS_IN_A_ROW.sub(QUOTED, "".join(out))


def _final_pass(text: str, secrets: Sequence[str]) -> str:
    """The exact secrets masked once more: collapsing whitespace or removing quotes joins text."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
