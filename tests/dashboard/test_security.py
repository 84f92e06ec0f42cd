"""The dashboard is safe by default: read-only without credentials, sign-in for every
page once they are set, CSRF on every action, a read-only mode, nothing secret on a
page, and it works mounted under a prefix in Starlette and FastAPI (with the host's
own authorization). In process, over the ASGI interface (httpx), on a memory broker.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from offload import JobState, Offload
from offload.dashboard import create_app
from offload.dashboard.security import CSRF_COOKIE, SESSION_COOKIE
from offload.pausing import Paused
from tests.dashboard.dash_app import register

TOKEN = "tok-3f9a1c"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def app() -> AsyncIterator[Offload]:
    offload = Offload("memory://")
    register(offload)
    try:
        yield offload
    finally:
        await offload.aclose()


Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
def client() -> Client:
    def make(asgi: Any, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=asgi)
        return httpx.AsyncClient(transport=transport, base_url="http://dash.test", **kwargs)

    return make


async def dead_job(app: Offload) -> str:
    """A dead job, made through the broker API (no worker needed)."""
    from offload.envelope import ErrorInfo

    job = await app.tasks["dash.flaky"].enqueue_async("/nonexistent")
    broker = await app.connected_broker()
    [lease] = await broker.reserve(["beta"], worker_id="t", lease_s=60, limit=1)
    await broker.bury(lease, error=ErrorInfo("RuntimeError", "boom"))
    return job.id


async def csrf_of(http: httpx.AsyncClient, path: str = "/", **kwargs: Any) -> str:
    """Load a page (which sets the CSRF cookie) and return the token its forms carry."""
    page = await http.get(path, **kwargs)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def test_without_credentials_pages_are_readable_and_every_action_is_refused(
    app: Offload, client: Client
) -> None:
    job_id = await dead_job(app)
    async with client(create_app(app)) as http:
        for path in ("/", "/jobs", f"/jobs/{job_id}", "/dead", "/schedules", "/workers"):
            page = await http.get(path)
            assert page.status_code == 200, path
            assert "Read-only" in page.text
        assert "Replay" not in (await http.get(f"/jobs/{job_id}")).text
        csrf = await csrf_of(http, "/login")
        refused = await http.post(f"/jobs/{job_id}/replay", data={"csrf": csrf})
    assert refused.status_code == 403
    assert "no credentials are configured" in refused.text
    info = await (await app.connected_broker()).get_job(job_id)
    assert info is not None and info.state is JobState.DEAD


async def test_with_basic_auth_every_page_asks_for_it(app: Offload, client: Client) -> None:
    web = create_app(app, basic=("ops", "pw-7788"))
    async with client(web) as http:
        anonymous = await http.get("/jobs")
        wrong = await http.get("/jobs", auth=("ops", "nope"))
        right = await http.get("/jobs", auth=("ops", "pw-7788"))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "pw-7788" not in right.text


async def test_an_action_without_the_csrf_token_is_refused(app: Offload, client: Client) -> None:
    job_id = await dead_job(app)
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, f"/jobs/{job_id}")
        missing = await http.post(f"/jobs/{job_id}/replay", data={})
        forged = await http.post(f"/jobs/{job_id}/replay", data={"csrf": "x" * 43})
        other_site = await http.post(
            f"/jobs/{job_id}/replay", data={"csrf": csrf}, headers={"Origin": "https://evil.test"}
        )
        state = (await (await app.connected_broker()).get_job(job_id)).state  # type: ignore[union-attr]
        assert state is JobState.DEAD
        done = await http.post(f"/jobs/{job_id}/replay", data={"csrf": csrf})
    assert [missing.status_code, forged.status_code, other_site.status_code] == [403] * 3
    assert "CSRF" in missing.text and "another site" in other_site.text
    assert done.status_code == 303
    assert "notice=replayed" in done.headers["location"]
    info = await (await app.connected_broker()).get_job(job_id)
    assert info is not None and info.state is JobState.QUEUED


async def test_the_csrf_cookie_is_strict_and_hidden_from_scripts(
    app: Offload, client: Client
) -> None:
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        page = await http.get("/")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "script-src" not in page.headers["content-security-policy"]  # none allowed
    assert page.headers["x-frame-options"] == "DENY"


async def test_signing_in_with_the_token_sets_a_session_that_is_not_the_token(
    app: Offload, client: Client
) -> None:
    async with client(create_app(app, token=TOKEN)) as http:
        assert (await http.get("/jobs")).headers["location"] == "/login"
        csrf = await csrf_of(http, "/login")
        bad = await http.post("/login", data={"csrf": csrf, "token": "guess"})
        good = await http.post("/login", data={"csrf": csrf, "token": TOKEN})
        session = http.cookies.get(SESSION_COOKIE)
        after = await http.get("/jobs")
    assert bad.status_code == 403 and SESSION_COOKIE not in bad.headers.get("set-cookie", "")
    assert good.status_code == 303
    assert session and TOKEN not in session
    assert after.status_code == 200 and TOKEN not in after.text


async def test_read_only_mode_refuses_actions_even_when_signed_in(
    app: Offload, client: Client
) -> None:
    job_id = await dead_job(app)
    web = create_app(app, token=TOKEN, read_only=True)
    async with client(web, headers=BEARER) as http:
        page = await http.get(f"/jobs/{job_id}")
        csrf = await csrf_of(http, "/login")  # the job page has no form to take it from
        refused = await http.post(f"/jobs/{job_id}/purge", data={"csrf": csrf})
    assert ">Replay<" not in page.text and "Read-only" in page.text
    assert refused.status_code == 403 and "read-only" in refused.text
    assert await (await app.connected_broker()).get_job(job_id) is not None


async def test_a_broker_password_never_appears_on_a_page(client: Client) -> None:
    offload = Offload("redis://:hunter2@127.0.0.1:1/0")  # never connected: /login reads nothing
    web = create_app(offload, token=TOKEN)
    async with client(web) as http:
        page = await http.get("/login")
    assert "hunter2" not in page.text and "redis://:***@127.0.0.1:1/0" in page.text
    assert TOKEN not in page.text and "hunter2" not in repr(web.state.dashboard.access)
    assert TOKEN not in repr(web.state.dashboard.access)


async def test_replay_with_edited_arguments_makes_a_new_job_and_purges_the_dead_one(
    app: Offload, client: Client
) -> None:
    job_id = await dead_job(app)
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, f"/jobs/{job_id}")
        bad = await http.post(
            f"/jobs/{job_id}/replay-edited", data={"csrf": csrf, "args": "{", "kwargs": "{}"}
        )
        misfit = await http.post(  # dash.flaky takes one argument
            f"/jobs/{job_id}/replay-edited", data={"csrf": csrf, "args": "[1, 2]", "kwargs": "{}"}
        )
        done = await http.post(
            f"/jobs/{job_id}/replay-edited",
            data={"csrf": csrf, "args": '["/tmp/fixed"]', "kwargs": "{}"},
        )
    assert bad.status_code == 400 and "args is not JSON" in bad.text
    assert misfit.status_code == 400
    assert "bad arguments for task &#39;dash.flaky&#39;" in misfit.text
    assert done.status_code == 303
    new_id = done.headers["location"].split("/jobs/")[1].split("?")[0]
    broker = await app.connected_broker()
    new = await broker.get_job(new_id)
    assert new is not None and new.state is JobState.QUEUED and new.task == "dash.flaky"
    envelope = new.envelope()
    assert envelope is not None and envelope.args == ["/tmp/fixed"]
    assert await broker.get_job(job_id) is None


async def test_bulk_replay_takes_the_selected_jobs_or_all_of_a_task(
    app: Offload, client: Client
) -> None:
    ids = [await dead_job(app) for _ in range(3)]
    broker = await app.connected_broker()
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, "/dead")
        none = await http.post("/dead/replay", data={"csrf": csrf, "scope": "selected"})
        one = await http.post(
            "/dead/replay", data={"csrf": csrf, "scope": "selected", "job_id": ids[0]}
        )
        other = await http.post(
            "/dead/replay", data={"csrf": csrf, "scope": "all", "task": "dash.echo"}
        )
        rest = await http.post(
            "/dead/replay", data={"csrf": csrf, "scope": "all", "task": "dash.flaky"}
        )
    assert [r.headers["location"].split("n=")[1] for r in (none, one, other, rest)] == [
        "0",
        "1",
        "0",
        "2",
    ]
    states = [(await broker.get_job(i)).state for i in ids]  # type: ignore[union-attr]
    assert states == [JobState.QUEUED] * 3


async def test_mounted_under_a_prefix_in_starlette_links_carry_the_prefix(
    app: Offload, client: Client
) -> None:
    job_id = await dead_job(app)

    def is_admin(request: Request) -> bool:  # the host application's own check
        return request.headers.get("x-user") == "admin"

    host = Starlette(routes=[Mount("/ops/queues", app=create_app(app, authorize=is_admin))])
    async with client(host) as http:
        refused = await http.get("/ops/queues/jobs")
        page = await http.get(f"/ops/queues/jobs/{job_id}", headers={"x-user": "admin"})
        style = await http.get("/ops/queues/static/style.css")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        replay = await http.post(
            f"/ops/queues/jobs/{job_id}/replay", data={"csrf": csrf}, headers={"x-user": "admin"}
        )
    assert refused.status_code == 403
    assert page.status_code == 200
    assert 'href="/ops/queues/dead"' in page.text
    assert f'action="/ops/queues/jobs/{job_id}/replay"' in page.text
    assert "Path=/ops/queues;" in refused.headers["set-cookie"]  # the first page set it
    assert style.status_code == 200
    assert replay.status_code == 303
    assert replay.headers["location"].startswith(f"/ops/queues/jobs/{job_id}")


async def test_mounted_in_fastapi(app: Offload, client: Client) -> None:
    fastapi = pytest.importorskip("fastapi")
    api = fastapi.FastAPI()
    api.mount("/offload", create_app(app, token=TOKEN))
    await app.tasks["dash.echo"].enqueue_async("from fastapi")
    async with client(api, headers=BEARER) as http:
        page = await http.get("/offload/jobs")
    assert page.status_code == 200
    assert "dash.echo" in page.text and 'href="/offload/jobs/' in page.text


async def test_bad_filters_are_named(app: Offload, client: Client) -> None:
    async with client(create_app(app)) as http:
        page = await http.get("/jobs", params={"state": "zombie", "since": "yesterday"})
    assert page.status_code == 400
    assert "unknown state &#39;zombie&#39;" in page.text
    assert "since: not a time: &#39;yesterday&#39;" in page.text


async def test_mounted_by_a_plain_asgi_dispatcher_as_the_readme_shows_for_django(
    app: Offload, client: Client
) -> None:
    dashboard = create_app(app, token=TOKEN)

    async def host(scope: Any, receive: Any, send: Any) -> None:  # stands in for Django
        response = PlainTextResponse("the host app", status_code=200)
        await response(scope, receive, send)

    async def application(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/admin/jobs/"):
            return await dashboard({**scope, "root_path": "/admin/jobs"}, receive, send)
        return await host(scope, receive, send)

    await app.tasks["dash.echo"].enqueue_async("via django")
    async with client(application, headers=BEARER) as http:
        page = await http.get("/admin/jobs/jobs")
        other = await http.get("/accounts/login")
    assert page.status_code == 200 and "dash.echo" in page.text
    assert 'href="/admin/jobs/jobs/' in page.text
    assert other.text == "the host app"


async def test_an_action_never_redirects_to_another_site(app: Offload, client: Client) -> None:
    job_id = await dead_job(app)
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, "/dead")
        targets = []
        for bad in ("//evil.test/x", "/\\evil.test/x", "https://evil.test/"):
            done = await http.post(
                "/dead/purge", data={"csrf": csrf, "scope": "selected", "next": bad}
            )
            targets.append(done.headers["location"].split("?")[0])
        kept = await http.post(
            f"/jobs/{job_id}/purge", data={"csrf": csrf, "next": "/dead?queue=beta"}
        )
    assert targets == ["/dead"] * 3
    assert kept.headers["location"].startswith("/dead?queue=beta&notice=purged")


async def test_queues_and_schedules_are_paused_and_resumed_by_signed_in_users_only(
    app: Offload, client: Client
) -> None:
    async with client(create_app(app)) as anonymous:
        csrf = await csrf_of(anonymous, "/login")
        refused = await anonymous.post("/queues/alpha/pause", data={"csrf": csrf})
    assert refused.status_code == 403 and (await app.paused_async()).queues == {}

    await app.tasks["dash.echo"].enqueue_async("a job in alpha")
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, "/")
        paused = await http.post("/queues/alpha/pause", data={"csrf": csrf})
        again = await http.post("/queues/alpha/pause", data={"csrf": csrf})
        overview = await http.get("/")
        held = await app.paused_async()
        await http.post("/schedules/hourly-echo/pause", data={"csrf": csrf})
        schedules = await http.get("/schedules")
        schedule_held = (await app.paused_async()).schedules
        await http.post("/queues/alpha/resume", data={"csrf": csrf})
        await http.post("/schedules/hourly-echo/resume", data={"csrf": csrf})
    assert "notice=paused" in paused.headers["location"]
    assert "notice=unchanged" in again.headers["location"]
    assert list(held.queues) == ["alpha"]
    assert 's-paused" title=' in overview.text and 'action="/queues/alpha/resume"' in overview.text
    assert list(schedule_held) == ["hourly-echo"]
    assert 'action="/schedules/hourly-echo/resume"' in schedules.text
    assert await app.paused_async() == Paused({}, {})


async def test_credentials_with_non_ascii_characters_are_checked_never_a_server_error(
    app: Offload, client: Client
) -> None:
    """A password with an accent, or a forged cookie, is a refusal (or a sign-in when
    it is right), never a 500: `hmac.compare_digest` raises on non-ASCII strings."""
    token = "pässwörd-ß"
    wrong = "Bearer wrông".encode()
    async with client(create_app(app, token=TOKEN)) as http:
        bearer = await http.get("/", headers={b"Authorization": wrong})
        basic = await http.get("/", auth=("ops", "wrông"))
        cookie = await http.get("/", headers={b"Cookie": f"{SESSION_COOKIE}=ü".encode()})
    assert [bearer.status_code, basic.status_code, cookie.status_code] == [303] * 3

    async with client(create_app(app, token=token)) as http:
        right_bearer = await http.get("/", headers={b"Authorization": f"Bearer {token}".encode()})
        right_basic = await http.get("/", auth=("ops", token))
        csrf = await csrf_of(http, "/login")
        signed_in = await http.post("/login", data={"csrf": csrf, "token": token})
        page = await http.get("/")
        forged = await http.post("/queues/default/pause", data={"csrf": "é" * 43})
    assert [right_bearer.status_code, right_basic.status_code] == [200, 200]
    assert signed_in.status_code == 303 and page.status_code == 200
    assert forged.status_code == 403 and "CSRF" in forged.text

    async with client(create_app(app, basic=("opé", "mot-dé-passe"))) as http:
        right = await http.get("/", auth=("opé", "mot-dé-passe"))
        refused = await http.get("/", auth=("opé", "faux-été"))
    assert [right.status_code, refused.status_code] == [200, 401]


@pytest.mark.parametrize("name", ["memory", "sqlite", "postgres", "redis"])
async def test_a_bad_cursor_or_a_time_that_is_no_number_is_a_400_naming_it(
    name: str, broker_url: Callable[[str], str], client: Client
) -> None:
    """What a user can type in the address bar: a cursor cut short or made up (SQLite:
    an int too large for it), a time of NaN or infinity (Redis could not seek to it)."""
    offload = Offload(broker_url(name))
    register(offload)
    try:
        await offload.tasks["dash.echo"].enqueue_async("x")
        huge = "9" * 30
        async with client(create_app(offload)) as http:
            answers = {
                query: await http.get("/jobs", params=dict([query]))
                for query in [
                    ("cursor", "abc"), ("cursor", huge), ("cursor", "9" * 5000),
                    ("since", "nan"), ("until", "inf"), ("since", "-1e999"),
                ]
            }  # fmt: skip
            dead = await http.get("/dead", params={"cursor": "not-a-cursor"})
            fine = await http.get("/jobs")
    finally:
        await offload.aclose()
    assert fine.status_code == 200
    for (field, value), page in [*answers.items(), (("cursor", "not-a-cursor"), dead)]:
        if field == "cursor" and page.status_code == 200:
            continue  # a broker whose cursors are any text (Redis: a member to seek to)
        assert page.status_code == 400, (field, value[:40], page.text[-300:])
        assert "not a cursor" in page.text if field == "cursor" else "not a time" in page.text


async def test_purging_dead_jobs_older_than_nan_or_negative_hours_is_refused(
    app: Offload, client: Client
) -> None:
    """NaN hours reached the broker as no cutoff at all on SQLite (every dead job
    purged); a negative age is a typo, not "all of them"."""
    job_id = await dead_job(app)
    async with client(create_app(app, token=TOKEN), headers=BEARER) as http:
        csrf = await csrf_of(http, "/dead")
        answers = [
            await http.post(
                "/dead/purge", data={"csrf": csrf, "scope": "all", "older_than_h": hours}
            )
            for hours in ("nan", "-5", "inf", "1e400", "soon")
        ]
    assert [a.status_code for a in answers] == [400] * 5
    assert all("not a number of hours, 0 or more" in a.text for a in answers)
    info = await (await app.connected_broker()).get_job(job_id)
    assert info is not None and info.state is JobState.DEAD
