"""`offload dashboard`: serve the web dashboard with uvicorn.

Safe by default: it binds to 127.0.0.1, and without `--token` or `--basic-auth` it is
read-only. Credentials come from options or their environment twins
(`OFFLOAD_DASHBOARD_TOKEN`, `OFFLOAD_DASHBOARD_BASIC_AUTH`), never from the page.
"""

from __future__ import annotations

from typing import Any

import click

from offload.cli.shared import app_from_options, app_option, env_twin, url_option

__all__ = ["dashboard", "parse_basic"]


def parse_basic(value: str | None) -> tuple[str, str] | None:
    """`USER:PASSWORD` as a pair.

    Raises:
        click.BadParameter: no colon, or an empty user or password (the value itself
            is never echoed: it is a secret).
    """
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise click.BadParameter(
            "expected USER:PASSWORD, both non-empty", param_hint="--basic-auth"
        )
    return user, password


def _secret(name: str) -> dict[str, Any]:
    """An option's environment twin, shown in --help, its value never shown."""
    return {"envvar": f"OFFLOAD_{name}", "show_envvar": True, "show_default": False}


@click.command()
@app_option
@url_option
@click.option("--host", default="127.0.0.1", **env_twin("DASHBOARD_HOST"),
              help="Interface to bind; other than loopback, the network can reach it.")  # fmt: skip
@click.option("--port", default=8700, type=click.IntRange(0, 65535),
              **env_twin("DASHBOARD_PORT"), help="TCP port.")  # fmt: skip
@click.option("--token", default=None, **_secret("DASHBOARD_TOKEN"),
              help="Secret that signs users in (Bearer, Basic password, sign-in).")  # fmt: skip
@click.option("--basic-auth", "basic_auth", default=None, **_secret("DASHBOARD_BASIC_AUTH"),
              metavar="USER:PASSWORD", help="HTTP Basic credentials.")  # fmt: skip
@click.option("--read-only", is_flag=True, **env_twin("DASHBOARD_READ_ONLY"),
              help="Refuse every action, even to a signed-in user.")  # fmt: skip
@click.option("--root-path", default="", **env_twin("DASHBOARD_ROOT_PATH"),
              help="URL prefix when served under a path behind a proxy (/offload).")  # fmt: skip
def dashboard(
    app_spec: str | None,
    url: str | None,
    host: str,
    port: int,
    token: str | None,
    basic_auth: str | None,
    read_only: bool,
    root_path: str,
) -> None:
    """Serve the web dashboard: queues, jobs, dead letters, schedules, workers.

    Give --app MODULE:APP to see the app's schedules. Without --token or --basic-auth
    the dashboard is read-only.
    """
    try:
        import uvicorn

        from offload.dashboard import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'offload[dashboard]' ({exc})"
        ) from exc
    basic = parse_basic(basic_auth)
    app = app_from_options(app_spec, url)
    web = create_app(app, token=token or None, basic=basic, read_only=read_only)
    mode = "read-only" if read_only or not (token or basic) else "actions need sign-in"
    # uvicorn's root_path is the prefix a proxy strips: the pages are served at / and
    # link to root_path/. The URL printed is one that answers here.
    proxied = (
        f"; its links start with {root_path}/, for a proxy that strips it" if root_path else ""
    )
    click.echo(f"offload dashboard on http://{host}:{port}/ ({mode}{proxied})", err=True)
    uvicorn.run(web, host=host, port=port, root_path=root_path, log_level="warning",
                access_log=False)  # fmt: skip
