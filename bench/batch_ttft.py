"""Interactive time to first token with and without a batch on the gateway, for `bench/batch.sh`.

Against a running gateway: `moa-local bench` sends `--requests` single
requests (concurrency 1) to `--model` over idle engines (`OUT/idle`);
then the batch input is uploaded and submitted through `/v1/files` and
`/v1/batches` (the openai SDK), and once the batch is in progress and
loading the engines (every engine seen running a request, one still
running, the gateway's `moa_inflight` above 0) the same bench runs again
(`OUT/loaded`). Meanwhile, once a second, the engines' own queue
(`vllm:num_requests_running` and `_waiting`) and the gateway's admission
queue (`moa_queued`, `moa_batch_queued` per endpoint, interactive calls
waiting being the difference) are sampled. Then the batch is cancelled
and waited for until it has ended.

`OUT/ttft.json` holds both runs' TTFT and e2e percentiles, the gauges'
means and peaks during the loaded run, an estimate of the interactive
calls' mean wait in our admission queue (Little's law: the mean number
waiting over the interactive calls' arrival rate), and the batch's
statuses and counts before, after and at its end, so a loaded run the
batch did not last through shows as such. Left out: starting and
stopping the gateway (`bench/batch.sh` does), and judging the figures
(`bench/batch_summary.py`).

    python bench/batch_ttft.py --moa .venv/bin/moa-local --config bench/cpu-bench.yaml \
        --gateway http://127.0.0.1:8180 --input batch.jsonl --model moa-bench --out bench-out/batch/ttft
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from moa_local.bench.engines import metrics_url, scrape
from moa_local.config import Config, load_config
from moa_local.errors import MoaError

ENDED = ("completed", "failed", "expired", "cancelled")
GATEWAY_GAUGES = {"moa_queued": "queued", "moa_batch_queued": "batch_queued", "moa_inflight": "inflight"}
SAMPLE_EVERY_S = 1.0
POLL_S = 0.5


def gateway_gauges(text: str) -> dict[str, dict[str, float]]:
    """Per endpoint, the gateway's queued, batch_queued and inflight gauges from its /metrics text."""
    gauges: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if family.name in GATEWAY_GAUGES:
            for sample in family.samples:
                gauges[sample.labels["endpoint"]][GATEWAY_GAUGES[family.name]] = float(sample.value)
    return dict(gauges)


def gauge_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and peaks over samples `{"gateway": {endpoint: gauges}, "engines": {name: {running, waiting}}}`:
    per endpoint the interactive calls waiting in our queue (queued - batch_queued) and the batch calls
    waiting; per engine its running and waiting requests."""
    series: dict[str, dict[str, dict[str, list[float]]]] = {
        part: defaultdict(lambda: defaultdict(list)) for part in ("endpoints", "engines")
    }
    for sample in samples:
        for name, g in sample.get("gateway", {}).items():
            if "queued" in g and "batch_queued" in g:
                series["endpoints"][name]["interactive_waiting"].append(g["queued"] - g["batch_queued"])
                series["endpoints"][name]["batch_waiting"].append(g["batch_queued"])
            if "inflight" in g:
                series["endpoints"][name]["inflight"].append(g["inflight"])
        for name, figures in sample.get("engines", {}).items():
            for key in ("running", "waiting"):
                if key in figures:
                    series["engines"][name][key].append(figures[key])
    return {
        "samples": len(samples),
        **{part: {name: {key: {"mean": sum(v) / len(v), "peak": max(v)} for key, v in gauges.items()}
                  for name, gauges in per.items()} for part, per in series.items()},
    }  # fmt: skip


def admission_wait_s(summary: dict[str, Any], calls: int, wall_s: float) -> float | None:
    """Little's law: the interactive calls' mean wait in our queue, from the mean number waiting (summed over
    endpoints) and the calls' arrival rate (`calls` over `wall_s`)."""
    waiting = [g["interactive_waiting"]["mean"] for g in summary.get("endpoints", {}).values()
               if "interactive_waiting" in g]  # fmt: skip
    if not waiting or calls <= 0 or wall_s <= 0:
        return None
    return float(sum(waiting)) * wall_s / calls


def describe(path: Path) -> dict[str, Any]:
    """The batch input's request lines and the models they ask."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"lines": len(lines), "models": sorted({line["body"]["model"] for line in lines})}


def calls_per_request(config: Config, model: str) -> int:
    """Engine calls one request to `model` makes: each agent of each layer and the aggregator, or one."""
    mixture = config.mixtures.get(model)
    return 1 if mixture is None else sum(len(layer.agents) for layer in mixture.layers) + 1


class Watch:
    """Scrapes the gateway's and the engines' gauges every second until stopped."""

    def __init__(self, http: httpx.AsyncClient, gateway: str, engines: dict[str, str]) -> None:
        self.http, self.gateway, self.engines = http, metrics_url(gateway), engines
        self.samples: list[dict[str, Any]] = []
        self.seen_running: set[str] = set()  # engines seen with a request running

    async def sample(self) -> dict[str, Any]:
        engines = await asyncio.gather(*(scrape(self.http, url) for url in self.engines.values()))
        sample: dict[str, Any] = {"t": time.time(), "engines": {}, "gateway": {}}
        for name, figures in zip(self.engines, engines, strict=True):
            if isinstance(figures, dict):
                sample["engines"][name] = {k: figures[k] for k in ("running", "waiting") if k in figures}
                if figures.get("running", 0) > 0:
                    self.seen_running.add(name)
        with suppress(httpx.HTTPError, ValueError):
            response = await self.http.get(self.gateway)
            if response.status_code == 200:
                sample["gateway"] = gateway_gauges(response.text)
        return sample

    async def run(self) -> None:
        while True:
            self.samples.append(await self.sample())
            await asyncio.sleep(SAMPLE_EVERY_S)


async def bench(args: argparse.Namespace, engines: dict[str, str], out: Path, warmup: int) -> dict[str, Any]:
    """One `moa-local bench` run at concurrency 1; its segment from results.json."""
    command = [args.moa, "bench", "--url", args.gateway, "--model", args.model, "--concurrency", "1",
               "--requests", str(args.requests), "--max-tokens", str(args.max_tokens), "--warmup", str(warmup),
               "--timeout", "900", "--out", str(out)]  # fmt: skip
    for url in engines.values():
        command += ["--engine-metrics", url]
    process = await asyncio.create_subprocess_exec(*command)
    try:
        code = await process.wait()
    finally:
        if process.returncode is None:  # interrupted: it got the signal too
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), 10.0)
            if process.returncode is None:
                process.kill()
                await process.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}")
    segment: dict[str, Any] = json.loads((out / "results.json").read_text())["segments"][0]
    return segment


def run_figures(segment: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": segment["ok"], "errors": segment["errors"], "wall_s": segment["wall_s"],
        "ttft_p50_s": segment["ttft_s"]["p50"], "ttft_p95_s": segment["ttft_s"]["p95"],
        "e2e_p50_s": segment["e2e_s"]["p50"], "gateway_ttft_part_p50_s": segment["added_ttft_s"]["p50"],
        "engines": segment["engines"],
    }  # fmt: skip


def batch_state(batch: Any) -> dict[str, Any]:
    counts = batch.request_counts
    return {"status": batch.status,
            "counts": counts.model_dump() if counts is not None else None, "at": time.time()}  # fmt: skip


async def until_loaded(client: openai.AsyncOpenAI, watch: Watch, batch_id: str, timeout_s: float) -> Any:
    """The batch once it loads the engines, or once it has ended or the time is up (check its status)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        sample = await watch.sample()
        inflight = sum(g.get("inflight", 0.0) for g in sample["gateway"].values())
        running = any(e.get("running", 0) > 0 for e in sample["engines"].values())
        everyone = watch.seen_running >= set(watch.engines)
        if batch.status in ENDED or time.monotonic() > deadline:
            return batch
        if batch.status == "in_progress" and inflight > 0 and running and everyone:
            return batch
        await asyncio.sleep(POLL_S)


async def end(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float) -> Any:
    """Cancel the batch unless it has ended, and wait (bounded) until it has."""
    batch = await client.batches.retrieve(batch_id)
    if batch.status not in ENDED:
        with suppress(openai.APIStatusError):  # it ended in between
            await client.batches.cancel(batch_id)
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ENDED or time.monotonic() > deadline:
            return batch
        await asyncio.sleep(POLL_S)


async def measure(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    by_url: dict[str, str] = {}
    for name, endpoint in config.endpoints.items():
        by_url.setdefault(metrics_url(endpoint.base_url), name)
    engines = {name: url for url, name in by_url.items()}  # once per engine, named by its first endpoint
    result: dict[str, Any] = {"model": args.model, "requests": args.requests, "max_tokens": args.max_tokens}
    result["idle"] = run_figures(await bench(args, engines, args.out / "idle", warmup=1))
    async with httpx.AsyncClient(timeout=5.0) as http, openai.AsyncOpenAI(
        base_url=f"{args.gateway.rstrip('/')}/v1", api_key="none", max_retries=0, timeout=120.0
    ) as client:  # fmt: skip
        watch = Watch(http, args.gateway, engines)
        uploaded = await client.files.create(file=(args.input.name, args.input.read_bytes()), purpose="batch")
        submitted = time.monotonic()
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                             completion_window="24h")  # fmt: skip
        info: dict[str, Any] = {"id": batch.id, "file": args.input.name, **describe(args.input)}
        result["batch"] = info
        try:
            batch = await until_loaded(client, watch, batch.id, args.load_timeout)
            info["loaded_after_s"] = time.monotonic() - submitted
            info["before"] = batch_state(batch)
            info["loaded"] = batch.status == "in_progress" and watch.seen_running >= set(engines)
            watch.samples.clear()
            sampler = asyncio.create_task(watch.run())
            try:
                segment = await bench(args, engines, args.out / "loaded", warmup=0)
            finally:
                sampler.cancel()
                with suppress(asyncio.CancelledError):
                    await sampler
            info["after"] = batch_state(await client.batches.retrieve(batch.id))
        finally:
            info["end"] = batch_state(await end(client, batch.id, args.end_timeout))
    loaded = result["loaded"] = run_figures(segment)
    gauges = loaded["gauges"] = gauge_summary(watch.samples)
    calls = segment["ok"] * calls_per_request(config, args.model)
    loaded["admission_wait_per_call_s"] = admission_wait_s(gauges, calls, segment["wall_s"])
    info["lasted"] = info["loaded"] and info["after"]["status"] == "in_progress"  # the whole loaded run
    (args.out / "gauges.jsonl").write_text("".join(json.dumps(s) + "\n" for s in watch.samples))
    idle, under = result["idle"]["ttft_p50_s"], loaded["ttft_p50_s"]
    result["ttft_ratio"] = under / idle if idle and under is not None else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--moa", default="moa-local", help="the moa-local command")
    parser.add_argument("--config", required=True)
    parser.add_argument("--gateway", required=True, help="the gateway's URL, serving --config")
    parser.add_argument("--input", required=True, type=Path, help="the batch's input file")
    parser.add_argument("--model", default="moa-bench", help="what the interactive requests ask")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--load-timeout", type=float, default=900.0, help="seconds for the batch to load the engines")
    parser.add_argument("--end-timeout", type=float, default=600.0, help="seconds for the cancelled batch to end")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except MoaError as exc:
        print(f"batch_ttft.py: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(measure(args, config))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, openai.OpenAIError) as exc:
        print(f"batch_ttft.py: {exc}", file=sys.stderr)
        return 1
    (args.out / "ttft.json").write_text(json.dumps(result, indent=2) + "\n")
    idle, loaded, ratio = result["idle"]["ttft_p50_s"], result["loaded"]["ttft_p50_s"], result["ttft_ratio"]
    print(f"interactive TTFT p50: {idle or 0:.2f} s idle, {loaded or 0:.2f} s under the batch ({ratio or 0:.2f}x); "
          f"the batch lasted the loaded run: {result['batch']['lasted']}, ended {result['batch']['end']['status']}",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
