from __future__ import annotations

import time

import click


@click.command("health")
@click.argument("url")
@click.option("--wait", "wait_s", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Keep trying for this many seconds until the server is ready.")
@click.option("--model", default=None, help="Also require this model to be ready.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A JWT to send as 'Authorization: Bearer' (model readiness needs one when "
                   "the server checks tokens).")
def health(url: str, wait_s: float, model: str | None, token_file: str | None) -> None:
    """Check that an Open Inference Protocol server at URL is ready (exit 0) or not (exit 1)."""
    import httpx

    path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
    headers = {}
    if token_file:
        from pathlib import Path

        headers["Authorization"] = "Bearer " + Path(token_file).read_text().strip()
    deadline = time.monotonic() + wait_s
    last = ""
    while True:
        try:
            response = httpx.get(url.rstrip("/") + path, headers=headers, timeout=2.0)
            if response.status_code == 200:
                click.echo(f"ready: {url}{path}")
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise click.ClickException(f"not ready: {url}{path} ({last})")
        time.sleep(0.2)
