"""`moa-local top`'s screen: the per-endpoint table and the loop that refreshes it.

What the numbers mean and how they are read from /metrics is
`moa_local.snapshot`'s business; this module only draws them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from moa_local.errors import MoaError
from moa_local.snapshot import EndpointRow, fetch_snapshot, summarize
from moa_local.urls import metrics_url


def render_table(rows: Iterable[EndpointRow], title: str) -> Table:
    table = Table(title=title, caption="p50 in grey: no call in the last interval, median since start")
    for header in ("endpoint", "up", "in flight", "calls/s", "p50 latency", "prompt tok/s", "gen tok/s", "errors"):
        table.add_column(header, justify="left" if header == "endpoint" else "right")
    for row in rows:
        up = Text("?", style="dim") if row.up is None else Text("up", "green") if row.up else Text("DOWN", "bold red")
        p50 = Text("-" if row.p50_s is None else f"{row.p50_s:.2f} s", style="" if row.p50_windowed else "dim")
        errors = Text(str(row.errors), style="red" if row.errors else "")
        table.add_row(
            row.endpoint,
            up,
            str(row.inflight),
            _number(row.calls_per_s, 2),
            p50,
            _number(row.prompt_tokens_per_s, 1),
            _number(row.completion_tokens_per_s, 1),
            errors,
        )
    return table


def run(
    url: str,
    *,
    interval_s: float = 2.0,
    once: bool = False,
    api_key: str | None = None,
    timeout_s: float = 5.0,
    console: Console | None = None,
) -> None:
    """Print one table after one interval (`once`), or refresh one until Ctrl-C."""
    out = console or Console()
    title = f"moa-local top: {metrics_url(url)}"
    with httpx.Client(timeout=timeout_s) as client:
        before = fetch_snapshot(client, url, api_key)
        if once:
            time.sleep(interval_s)
            out.print(render_table(summarize(before, fetch_snapshot(client, url, api_key)), title))
            return
        with Live(render_table(summarize(None, before), title), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                try:
                    after = fetch_snapshot(client, url, api_key)
                except MoaError as exc:  # keep watching: the gateway may be restarting
                    live.update(Group(render_table([], title), Text(str(exc), style="red")), refresh=True)
                    continue
                live.update(render_table(summarize(before, after), title), refresh=True)
                before = after


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
