"""The web view in a real browser (Chromium through Playwright) against the whole stack.

Debian's Chromium (`apt-get install chromium`): Playwright's own browser download needs the
network. `MOOT_CHROMIUM` names another executable. Without a Chromium or the `playwright` package
the tests are skipped, saying so, except in CI (`CI` set), where they must run.
`MOOT_WEB_SCREENSHOTS=docs/images` saves the run pages of a consortium and a debate there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the browser tests need the playwright package")

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Download,
    Error,
    Page,
    Route,
    async_playwright,
    expect,
)

from moot.cli.client import MootClient
from moot.devstack.stack import Stack

CHROMIUM = os.environ.get("MOOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("MOOT_WEB_SCREENSHOTS")

pytestmark = [
    pytest.mark.clients,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"no Chromium at {CHROMIUM}"
    ),
]

# What the test models say (tests/e2e/conftest.py).
VERDICT = "STOP - " + " ".join(f"point{i} weighs the debate;" for i in range(1, 16))
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
RUN_URL = re.compile(r"/runs/([0-9a-f]{32})$")

expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    yield ctx
    await ctx.close()


class Watched:
    """A page, and what it said that it should not have: script errors (a refused inline script
    or style would be one: the policy's refusals are logged as errors) and dialogs."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", self._page_error)
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _page_error(self, error: Error) -> None:
        self.errors.append(str(error))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


async def signed_in(context: BrowserContext, stack: Stack, api_key: str, path: str = "/") -> Watched:
    """A new tab at `path`, signed in with the keyboard alone: type the key, press Enter."""
    page = await context.new_page()
    watched = Watched(page)
    await page.goto(stack.gateway_url + path)
    key = page.get_by_label("API key")
    await expect(key).to_be_focused()
    await page.keyboard.type(api_key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#nav")).to_be_visible()
    return watched


async def start_from_form(page: Page, mode: str, prompt: str, fields: dict[str, str]) -> str:
    """Fill /new for `mode` and start the run: its id, once its page is shown."""
    await page.locator("#nav").get_by_role("link", name="New run").click()
    await page.get_by_label("Mode", exact=True).select_option(mode)
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    for label, value in fields.items():
        if label.startswith("Add "):
            await page.get_by_role("button", name=label).click()
            continue
        field = page.get_by_label(label, exact=True)
        if await field.evaluate("el => el.tagName") == "SELECT":
            await field.select_option(value)
        else:
            await field.fill(value)
    await page.get_by_role("button", name="Start run").click()
    await page.wait_for_url(RUN_URL)
    match = RUN_URL.search(page.url)
    assert match is not None
    return match.group(1)


async def finished(client: MootClient, run_id: str, seconds: float = 30) -> dict[str, Any]:
    for _ in range(int(seconds / 0.2)):
        run = await client.get_run(run_id)
        if run["status"] != "running":
            return run
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} still running after {seconds} s")


async def saved_text(download: Download) -> str:
    return await asyncio.to_thread(Path(await download.path()).read_text)


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:  # Playwright makes the folder
        await page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


async def test_the_page_is_served_with_a_strict_policy(stack: Stack, context: BrowserContext) -> None:
    page = await context.new_page()
    response = await page.goto(stack.gateway_url + "/runs")
    assert response is not None and response.ok
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    # A wrong key is refused on the form, with the API's reason.
    await page.get_by_label("API key").fill("moot_not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("Invalid API key")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_a_consortium_started_from_the_form_is_watched_live_and_exported(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    watched = await signed_in(context, stack, api_key)
    page = watched.page
    run_id = await start_from_form(
        page,
        "consortium",
        "Should the web view be tested in a real browser?",
        {
            "Member 1 model": "ponder",
            "Member 1 count": "2",
            "Arbiter model": "web_arb",
            "Maximum iterations (default 3)": "2",
        },
    )
    # Live: the first iteration's answers are drawn while the run goes on, then the second.
    await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    await expect(page.get_by_role("heading", name="Iteration 1")).to_be_visible()
    assert await page.get_by_text("◌ running").count() >= 1
    # Reloaded mid-run: the page is drawn again from the run's view, nothing lost or repeated.
    await page.reload()
    await expect(page.get_by_role("heading", name="Iteration 2")).to_be_visible()
    await expect(page.locator(".run-facts .status")).to_have_text("✓ completed")
    await expect(page.get_by_role("status").filter(has_text="Ended")).to_be_visible()
    for n in (1, 2):
        iteration = page.locator("section.iteration").nth(n - 1)
        await expect(iteration.locator(".answers article")).to_have_count(2)
        await expect(iteration.locator(".synthesis")).to_contain_text("Synthesis by web_arb")
    await expect(page.locator("section.iteration")).to_have_count(2)
    await expect(page.locator(".refinement li").first).to_have_text(
        "Resolve the remaining differences of emphasis."
    )
    await expect(page.locator(".dissent")).to_have_count(2)
    chart = page.get_by_role("img", name=re.compile("Arbiter confidence by iteration"))
    await expect(chart).to_be_visible()
    assert await chart.locator("text.value").all_text_contents() == ["0.60", "0.60"]
    # Usage: a row per call (2 members + 1 arbiter, twice) and the total the API reports.
    run = await client.get_run(run_id)
    await expect(page.locator(".usage tbody tr")).to_have_count(6)
    total = run["usage"]["input_tokens"]
    await expect(page.locator(".usage tfoot")).to_contain_text(f"{total:,}")

    async with page.expect_download() as md_download:
        await page.get_by_role("button", name="Export Markdown").click()
    markdown = await saved_text(await md_download.value)
    assert markdown.startswith(f"# moot consortium run {run_id}\n")
    assert "## Prompt\n\nShould the web view be tested in a real browser?" in markdown
    assert "### Iteration 2" in markdown and "Confidence: 0.60" in markdown
    async with page.expect_download() as json_download:
        await page.get_by_role("button", name="Export JSON").click()
    download = await json_download.value
    assert download.suggested_filename == f"moot-consortium-{run_id}.json"
    exported = json.loads(await saved_text(download))
    assert exported["id"] == run_id and exported["status"] == "completed"
    assert [len(it["members"]) for it in exported["iterations"]] == [2, 2]
    await screenshot(page, "web-consortium.png")
    assert watched.errors == [] and watched.dialogs == []


async def test_a_debate_verdict_grows_while_it_streams_and_survives_a_reload(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    watched = await signed_in(context, stack, api_key)
    page = watched.page
    run_id = await start_from_form(
        page,
        "debate",
        "Is a hot dog a sandwich?",
        {
            "Debater 1 model": "d1",
            "Add debater": "",
            "Debater 2 model": "d2",
            "Judge mode": "external_judge",
            "Judge model": "web_judge",
        },
    )
    verdict = page.locator("#verdict-text")
    await expect(verdict).not_to_be_empty()
    seen = []
    for _ in range(5):
        seen.append(await verdict.text_content() or "")
        await asyncio.sleep(0.4)
    assert all(VERDICT.startswith(text) for text in seen), seen
    assert [len(t) for t in seen] == sorted(len(t) for t in seen) and len(seen[-1]) > len(seen[0]), seen
    assert len(seen[-1]) < len(VERDICT), "the verdict was complete before it could be watched growing"
    await expect(page.locator("#verdict")).to_have_attribute("aria-busy", "true")
    # The judge has stopped it, the verdict is still coming: ending, not ended.
    await expect(page.locator("p.reason")).to_contain_text("Why it is ending: ")

    # A reload mid-verdict: every turn is there once, and the verdict's words so far come back.
    await page.reload()
    await expect(page.locator("#verdict-text")).not_to_be_empty()
    await expect(page.locator(".run-facts .status")).to_have_text("✓ completed")
    await expect(verdict).to_have_text(VERDICT)
    await expect(page.locator("#verdict")).to_have_attribute("aria-busy", "false")
    await expect(page.get_by_role("heading", name="Verdict by the judge web_judge")).to_be_visible()
    await expect(page.locator("section.round")).to_have_count(2)
    await expect(page.locator(".transcript article")).to_have_count(4)
    await expect(page.locator("article.judge")).to_contain_text("Judge web_judge: stop")
    await expect(page.locator("#answer-text")).to_have_text(VERDICT)
    await expect(page.locator("p.reason")).to_contain_text("Why it ended: ")
    run = await finished(client, run_id)
    assert run["result"]["text"] == VERDICT
    await screenshot(page, "web-debate.png")

    async with page.expect_download() as md_download:
        await page.get_by_role("button", name="Export Markdown").click()
    markdown = await saved_text(await md_download.value)
    assert f"## Answer\n\n{VERDICT}\n" in markdown
    assert f"### Verdict by the judge web_judge\n\n{VERDICT}\n" in markdown
    assert watched.errors == [] and watched.dialogs == []


async def test_model_text_is_shown_as_text_and_runs_nothing(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    accepted = await client.create_run(
        {
            "prompt": f"Repeat this: {XSS}",
            "members": [{"model": "xss"}, {"model": "m1"}],
            "arbiter": "web_arb",
            "max_iterations": 1,
        }
    )
    await finished(client, accepted["id"])
    watched = await signed_in(context, stack, api_key, f"/runs/{accepted['id']}")
    page = watched.page
    await expect(page.locator("[data-call$=':member:xss:1'] .text")).to_have_text(f"{XSS} Confidence: 0.8")
    await expect(page.locator(".prompt .text")).to_have_text(f"Repeat this: {XSS}")
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("window.__pwned") is None
    # The runs list shows the prompt's first line as text too.
    await page.locator("#nav").get_by_role("link", name="Runs").click()
    await expect(page.get_by_role("link", name=f"Repeat this: {XSS}").first).to_be_visible()
    assert await page.evaluate("window.__pwned") is None
    assert watched.dialogs == [] and watched.errors == []


async def test_a_run_is_cancelled_from_its_page(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    watched = await signed_in(context, stack, api_key)
    page = watched.page
    # Three iterations of a three-second member: time enough to reach the button.
    accepted = await client.create_run(
        {"prompt": "Take your time.", "members": [{"model": "slowpoke"}], "arbiter": "web_arb"}
    )
    await page.goto(f"{stack.gateway_url}/runs/{accepted['id']}")
    await expect(page.get_by_role("heading", name="Iteration 1")).to_be_visible()
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator(".run-facts .status")).to_have_text("■ cancelled")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert (await client.get_run(accepted["id"]))["status"] == "cancelled"
    assert watched.errors == []


async def test_the_form_shows_each_refused_field_beside_it(
    stack: Stack, context: BrowserContext, api_key: str
) -> None:
    watched = await signed_in(context, stack, api_key, "/new")
    page = watched.page
    member = page.get_by_label("Member 1 model", exact=True)
    arbiter = page.get_by_label("Arbiter model")
    await page.get_by_label("Prompt", exact=True).fill("Anything?")
    await member.fill("no-such-model")
    await page.get_by_role("button", name="Start run").click()
    # The request's own validation first: the arbiter is missing.
    await expect(arbiter).to_have_attribute("aria-invalid", "true")
    await expect(arbiter).to_be_focused()
    await expect(page.locator(".field", has=arbiter)).to_contain_text("Field required")
    # Then the deployment's model list: member 1 names a model it does not offer.
    await arbiter.fill("m1")
    await page.get_by_role("button", name="Start run").click()
    await expect(member).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(".field", has=member)).to_contain_text(
        "model 'no-such-model' is not offered here"
    )
    await expect(arbiter).not_to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("/new")
    # The browser logs each refused request (422) as an error; nothing else may be logged.
    assert all("422" in e for e in watched.errors), watched.errors


async def test_council_vote_and_moa_runs_show_their_steps(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    council = await client.create_run(
        {
            "mode": "council",
            "prompt": "What is the capital of Australia?",
            "members": [{"model": "ranker", "count": 3}],
            "chairman": "chair",
        }
    )
    vote = await client.create_run(
        {
            "mode": "vote",
            "prompt": "What is two times four?",
            "members": [{"model": "eight", "count": 2}, {"model": "nine", "count": 2}],
            "answer_format": "number",
            "escalate": {"mode": "consortium", "arbiter": "m1"},
        }
    )
    moa = await client.create_run(
        {
            "mode": "moa",
            "prompt": "Why is the sky blue?",
            "layers": [[{"model": "m1"}, {"model": "m2"}], [{"model": "m1"}, {"model": "m2"}]],
            "aggregator": "chair",
        }
    )
    for run in (council, vote, moa):
        assert (await finished(client, run["id"]))["status"] == "completed"
    watched = await signed_in(context, stack, api_key, f"/runs/{council['id']}")
    page = watched.page
    for name in ("Answers", "Reviews", "Aggregate ranking", "Chairman"):
        await expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    await expect(page.locator("table").filter(has_text="Borda").locator("tbody tr")).to_have_count(3)
    await expect(page.locator("#answer-text")).to_have_text("The capital of Australia is Canberra.")

    await page.goto(f"{stack.gateway_url}/runs/{vote['id']}")
    await expect(page.get_by_role("heading", name="Escalated to a consortium")).to_be_visible()
    await expect(page.locator(".agreement")).to_contain_text("Agreement 50% (threshold 60%)")
    await expect(page.get_by_role("heading", name="Iteration 1")).to_be_visible()
    # The votes are the escalation's first iteration: each call counted once in the usage.
    await expect(page.locator(".usage tbody tr")).to_have_count(5)

    await page.goto(f"{stack.gateway_url}/runs/{moa['id']}")
    for name in ("Layer 1", "Layer 2", "Aggregator"):
        await expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    await expect(page.locator(".usage tbody tr")).to_have_count(5)
    assert watched.errors == []


async def test_the_runs_list_follows_status_and_filters(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    watched = await signed_in(context, stack, api_key, "/runs")
    page = watched.page
    accepted = await client.create_run(
        {
            "prompt": "A slow question for the list",
            "members": [{"model": "slowpoke"}],
            "arbiter": "web_arb",
            "max_iterations": 2,
        }
    )
    row = page.locator(f"tr[data-run='{accepted['id']}']")
    await expect(row).to_contain_text("◌ running")
    await expect(row).to_contain_text("✓ completed")  # without a reload
    await expect(row).to_contain_text("consortium")
    await page.get_by_label("Mode").select_option("debate")
    await expect(row).to_have_count(0)
    assert "mode=debate" in page.url
    await page.get_by_label("Mode").select_option("consortium")
    await page.get_by_label("Status").select_option("completed")
    await expect(row).to_have_count(1)
    for status in await page.locator("tbody .status").all_text_contents():
        assert status == "✓ completed"
    await row.get_by_role("link").click()
    await expect(page.get_by_role("heading", name="Consortium run")).to_be_visible()
    assert watched.errors == []


async def test_a_dropped_event_stream_resumes_after_the_last_event(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    requests: list[str | None] = []
    cut_after: list[str] = []

    async def drop_the_first_stream(route: Route) -> None:
        requests.append(route.request.headers.get("last-event-id"))
        if len(requests) > 1:
            await route.continue_()
            return
        # The first stream breaks after three events, as a connection dropped by a proxy would.
        full = await route.fetch()
        events = (await full.text()).replace("\r\n", "\n").split("\n\n")
        head = [e for e in events if e.startswith(("event:", "id:", "data:"))][:3]
        cut_after.extend(re.findall(r"^id: ?(\d+)$", head[-1], flags=re.M))
        await route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body="\n\n".join(head) + "\n\n"
        )

    watched = await signed_in(context, stack, api_key)
    page = watched.page
    await page.route("**/v1/runs/*/events", drop_the_first_stream)
    accepted = await client.create_run(
        {
            "prompt": "Resume me",
            "members": [{"model": "ponder", "count": 2}],
            "arbiter": "web_arb",
            "max_iterations": 2,
        }
    )
    await page.goto(f"{stack.gateway_url}/runs/{accepted['id']}")
    await expect(page.get_by_role("status")).to_have_text("Ended")  # the second stream's end event
    await expect(page.locator(".run-facts .status")).to_have_text("✓ completed")
    assert requests[0] is None and len(requests) >= 2
    assert requests[1] == cut_after[0]
    await expect(page.locator("section.iteration .answers article")).to_have_count(4)
    assert watched.errors == []


async def test_the_run_page_reads_on_a_phone_and_links_the_trace(
    stack: Stack, context: BrowserContext, api_key: str, client: MootClient
) -> None:
    accepted = await client.create_run(
        {
            "prompt": "Small screens?",
            "members": [{"model": "m1"}, {"model": "m2"}],
            "arbiter": "web_arb",
            "max_iterations": 1,
        }
    )
    await finished(client, accepted["id"])
    watched = await signed_in(context, stack, api_key)
    page = watched.page
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def with_trace(route: Route) -> None:
        response = await route.fetch()
        await route.fulfill(response=response, json={**await response.json(), "trace_id": trace_id})

    async def with_template(route: Route) -> None:
        response = await route.fetch()
        settings = {**await response.json(), "trace_url_template": "https://jaeger.example/trace/{trace_id}"}
        await route.fulfill(response=response, json=settings)

    await page.route(f"**/v1/runs/{accepted['id']}", with_trace)
    await page.route("**/web/settings", with_template)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{stack.gateway_url}/runs/{accepted['id']}")
    link = page.get_by_role("link", name="Open its trace")
    await expect(link).to_have_attribute("href", f"https://jaeger.example/trace/{trace_id}")
    await expect(page.locator("section.iteration .answers article")).to_have_count(2)
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    await screenshot(page, "web-phone.png")
    assert watched.errors == []
