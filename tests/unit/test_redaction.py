"""The member worker's error redaction: what a provider's error may say in an outcome.

Secrets never come out (the call's own key, and the usual shapes of keys, tokens and credential
headers), a passage quoted from the call's messages never comes out (as is or escaped), the type
and the HTTP status always do, and short useful messages (litellm's "Missing credentials", a rate
limit) read as they were. Properties over arbitrary texts with hypothesis.
"""

from __future__ import annotations

import json
import os

import httpx
import litellm
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from moot_member_worker.redaction import ERROR_MAX, QUOTE_MIN, QUOTED, REDACTED, describe_error, redact

# Bounded for CI (well under a minute); MOOT_HYPOTHESIS_PROFILE=deep searches longer. Applied per
# test, not loaded globally: other modules' hypothesis users keep their own settings.
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", settings.get_profile("ci"), max_examples=5000)
BOUNDED = settings.get_profile(os.environ.get("MOOT_HYPOTHESIS_PROFILE", "ci"))

PROMPT = "Summarise the confidential merger memo about Project Falcon for the board, in French."


class ProviderError(Exception):
    """An error with an HTTP status, as litellm's and httpx's have."""

    def __init__(self, message: str, status_code: int | None = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def _windows(text: str, n: int = QUOTE_MIN) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _quotes(out: str, quoted: str) -> set[str]:
    """The `QUOTE_MIN`-long passages of `quoted` (whitespace collapsed as the output is) in `out`."""
    return _windows(out) & (_windows(quoted) | _windows(" ".join(quoted.split())))


# --------------------------------------------------------------------------------------- secrets

# Fake credentials in the shapes providers use, put together at run time so that no string in
# this file looks like a secret to a scanner (the AWS pair is AWS's own documented example).
AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI" + "/K7MDENG/bPxRfiCYEXAMPLEKEY"
GOOGLE_KEY = "AIza" + "SyA-1b2c3d4e5f6g7h8i9j0k"
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9." + "eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"


@pytest.mark.parametrize(
    ("leaky", "secret"),
    [
        (
            "Incorrect API key provided: " + "sk-" + "proj-Ab3dEf6hIj9kLm2nOp5q. Find your key at ...",
            "Ab3dEf6hIj9kLm2nOp5q",
        ),
        ("invalid x-api-key " + "sk-" + "ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm-AAAA", "Zx9Yw8Vu7Ts6Rq5Po4Nm"),
        ("headers={'Authorization': 'Bearer abc.DEF-123_ghi~jkl'}", "abc.DEF-123_ghi~jkl"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==\nnext line", "dXNlcjpwYXNzd29yZA"),
        (
            f"GET https://generativelanguage.example/v1/models?key={GOOGLE_KEY}&alt=sse",
            GOOGLE_KEY[:7],
        ),
        ("url https://host/v1/chat?api_key=plain-secret-value&x=1 failed", "plain-secret-value"),
        ('body {"model": "m", "api_key": "p4ssw0rd-in-json"}', "p4ssw0rd-in-json"),
        (f"signed with {AWS_ID} and {AWS_SECRET}", AWS_ID),
        (f"signed with {AWS_ID} and {AWS_SECRET}", AWS_SECRET[:13]),
        ("aws_secret_access_key=abcdEFGH1234/ijkl rejected", "abcdEFGH1234"),
        (f"token {JWT}", JWT.split(".")[1][:12]),
        ("proxy https://user:hunter2@proxy.internal:8080 refused", "hunter2"),
    ],
)
def test_shapes_of_secrets_are_masked(leaky: str, secret: str) -> None:
    out = describe_error(ProviderError(leaky))
    assert secret not in out
    assert REDACTED in out


def test_the_calls_own_key_is_masked_whatever_its_shape() -> None:
    key = "team-7f3c9a21e4b8"  # no known prefix: only the exact value can find it
    out = describe_error(ProviderError(f"key {key} is not allowed for model x; key was {key}"), secrets=[key])
    assert key not in out
    assert out == f"ProviderError (HTTP 400): key {REDACTED} is not allowed for model x; key was {REDACTED}"


def test_placeholder_keys_are_not_looked_for() -> None:
    # "sk-t" (the tests' key) would otherwise mask every "task-type".
    assert redact("task-type unknown", secrets=["sk-t"]) == "task-type unknown"


@pytest.mark.parametrize(
    "prose",
    [
        "Basic authentication is not supported",
        "Bearer token missing",
        "The api_key client option must be set",
        "You passed model=nosuchprovider/x",
        "timeout value=0.3, time taken=0.31 seconds",
        "request id 0f3a9c2e4b6d8f1a3c5e7b9d1f2a4c6e",
    ],
)
def test_prose_about_credentials_is_kept(prose: str) -> None:
    assert redact(prose) == prose


_KEY_ALPHABET = st.characters(codec="ascii", categories=["Lu", "Ll", "Nd"], include_characters="-_")


@BOUNDED
@given(
    before=st.text(max_size=200),
    after=st.text(max_size=200),
    secret=st.text(_KEY_ALPHABET, min_size=12, max_size=64),
    form=st.sampled_from(["{}", "api_key={}", "Bearer {}", "'{}'", "{}&x=1", '"key": "{}"']),
    request_text=st.text(max_size=100),
)
def test_an_exact_secret_never_comes_out(
    before: str, after: str, secret: str, form: str, request_text: str
) -> None:
    assume(secret not in "ProviderError (HTTP 401)")
    message = before + form.format(secret) + after
    out = describe_error(ProviderError(message, 401), secrets=[secret], request=[request_text])
    assert secret not in out
    assert len(out) <= ERROR_MAX


# ------------------------------------------------------------------------------ quoted request


@pytest.mark.parametrize(
    "quote",
    [PROMPT, json.dumps(PROMPT), repr({"role": "user", "content": PROMPT}), PROMPT[10:45]],
    ids=["raw", "json", "repr", "part"],
)
def test_a_quoted_prompt_is_replaced(quote: str) -> None:
    out = describe_error(
        ProviderError(f"Invalid request: messages[0] = {quote}; content policy"), request=[PROMPT]
    )
    assert not _quotes(out, PROMPT)
    assert QUOTED in out and out.startswith("ProviderError (HTTP 400): Invalid request: messages[0] =")
    assert out.endswith("; content policy")


def test_a_quote_with_a_secret_in_it_is_replaced_whole() -> None:
    prompt = "Use the key " + "sk-" + "live-0123456789abcdef to call the billing service and report back."
    out = describe_error(ProviderError(f"rejected: {prompt}"), request=[prompt])
    assert out == f"ProviderError (HTTP 400): rejected: {QUOTED}"


def test_json_escaped_prompt_with_newlines_and_quotes_is_replaced() -> None:
    prompt = 'Line one of the "document"\nline two, with ünïcode and more than twenty characters'
    body = json.dumps({"error": {"message": "bad", "echo": [{"content": prompt}]}})
    out = describe_error(ProviderError(body), request=[prompt])
    assert not _quotes(out, prompt) and not _quotes(out, json.dumps(prompt)[1:-1])


@BOUNDED
@given(
    prompt=st.text(min_size=QUOTE_MIN, max_size=300),
    before=st.text(max_size=100),
    after=st.text(max_size=100),
    escape=st.sampled_from(["raw", "json", "json-ascii", "repr"]),
)
def test_a_quoted_prompt_never_comes_out(prompt: str, before: str, after: str, escape: str) -> None:
    quoted = {
        "raw": prompt,
        "json": json.dumps(prompt, ensure_ascii=False)[1:-1],
        "json-ascii": json.dumps(prompt)[1:-1],
        "repr": repr(prompt)[1:-1],
    }[escape]
    out = describe_error(ProviderError(before + quoted + after), request=[prompt])
    assert not _quotes(out, quoted) and not _quotes(out, prompt)
    assert len(out) <= ERROR_MAX


@BOUNDED
@given(message=st.text(max_size=2000), secrets=st.lists(st.text(max_size=30)), request=st.lists(st.text()))
def test_never_raises_and_keeps_type_and_status(message: str, secrets: list[str], request: list[str]) -> None:
    out = describe_error(ProviderError(message, 503), secrets=secrets, request=request)
    assert out.startswith("ProviderError (HTTP 503)") and len(out) <= ERROR_MAX


# --------------------------------------------------------------------------- what stays useful


def test_long_messages_are_cut() -> None:
    out = describe_error(ProviderError("overloaded " * 100, 529))
    assert (
        len(out) == ERROR_MAX and out.endswith("…") and out.startswith("ProviderError (HTTP 529): overloaded")
    )


def test_an_error_without_message_or_status_is_its_type() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_a_broken_str_still_gives_the_type() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_error(Broken()) == "Broken"


def test_status_of_an_httpx_error_comes_from_its_response() -> None:
    request = httpx.Request("POST", "https://api.example/v1/chat/completions?key=" + "AIza" + "Sy-secret")
    response = httpx.Response(502, request=request)
    exc = httpx.HTTPStatusError(
        f"Server error '502 Bad Gateway' for url '{request.url}'", request=request, response=response
    )
    out = describe_error(exc)
    assert (
        out.startswith("HTTPStatusError (HTTP 502): Server error '502 Bad Gateway'")
        and "AIza" + "Sy-secret" not in out
    )


def test_litellm_messages_read_as_they_did_without_their_repeated_type() -> None:
    missing = (
        "OpenAIException - Missing credentials. Please pass an `api_key`, `workload_identity`, "
        "`admin_api_key`, or set the `OPENAI_API_KEY` or `OPENAI_ADMIN_KEY` environment variable."
    )
    # As litellm's exception mapping words it (seen from a call without a key).
    exc = litellm.InternalServerError(
        message=f"InternalServerError: {missing}", llm_provider="openai", model="gpt-4o-mini"
    )
    assert str(exc).startswith("litellm.InternalServerError: InternalServerError: OpenAIException")
    assert describe_error(exc) == f"InternalServerError (HTTP 500): {missing}"

    no_anthropic_key = litellm.AuthenticationError(
        message="Missing Anthropic API Key - A call is being made to anthropic but no key is set",
        llm_provider="anthropic",
        model="claude",
    )
    assert describe_error(no_anthropic_key) == (
        "AuthenticationError (HTTP 401): Missing Anthropic API Key - A call is being made to anthropic "
        "but no key is set"
    )
    response = httpx.Response(429, request=httpx.Request("POST", "http://x"))
    limited = litellm.RateLimitError(
        "OpenAIException - Rate limit reached for gpt-4o in organization org-x on tokens per min",
        llm_provider="openai",
        model="gpt-4o",
        response=response,
    )
    assert describe_error(limited) == (
        "RateLimitError (HTTP 429): OpenAIException - Rate limit reached for gpt-4o in organization org-x "
        "on tokens per min"
    )


def test_openais_own_masked_key_message_keeps_its_advice() -> None:
    message = (
        "OpenAIException - Incorrect API key provided: sk-proj-********************************WxYA. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    exc = litellm.AuthenticationError(message=message, llm_provider="openai", model="gpt-4o")
    assert describe_error(exc) == (
        f"AuthenticationError (HTTP 401): OpenAIException - Incorrect API key provided: {REDACTED}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
