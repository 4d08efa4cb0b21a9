"""Deployment files from a config: the Docker `compose` file, the `k8s` manifests, the GPU memory `plan`,
the `prometheus-config`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

import moa_local
from moa_local.cli.main import CONFIG_OPTION, main


@main.command()
@CONFIG_OPTION
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Write the compose file here (default: standard output).")  # fmt: skip
@click.option("--node", default=None, help="Write only the engines placed on this node (serve.node), ports published.")
def compose(config_path: str, out_path: str | None, node: str | None) -> None:
    """Write the Docker Compose file that runs a config's vLLM engines, gateway, Prometheus and Grafana.

    Run it from the repository's top level: the gateway image builds from the Dockerfile there.
    """
    from moa_local.config import load_config
    from moa_local.deploy.compose import compose_document, render

    config = load_config(config_path)
    base = os.path.dirname(os.path.abspath(out_path)) if out_path else os.getcwd()
    relative = Path(os.path.relpath(os.path.abspath(config_path), base)).as_posix()
    project_dir = Path(os.path.relpath(os.getcwd(), base)).as_posix()  # the Dockerfile and serving/ live here
    document = compose_document(config, config_path=relative, project_dir=project_dir, node=node)
    text = render(document, config_path=relative, node=node)
    if out_path is None:
        click.echo(text, nl=False)
        return
    _write(out_path, text)
    click.echo(f"wrote {out_path}", err=True)


@main.command()
@CONFIG_OPTION
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, writable=True),
              help="Write the manifests and kustomization.yaml into this folder.")  # fmt: skip
@click.option("--namespace", default=None, help="Namespace of every object (default: k8s.namespace).")
def k8s(config_path: str, out_dir: str, namespace: str | None) -> None:
    """Write Kubernetes manifests (a kustomize folder) for a config's vLLM engines, gateway and monitoring.

    Run it from the repository's top level: the shipped rules and dashboards are read from serving/ there.
    """
    from moa_local.config import K8S_NAME_PATTERN, load_config
    from moa_local.deploy.k8s import k8s_manifests, write_folder

    if namespace is not None and not re.fullmatch(K8S_NAME_PATTERN, namespace):
        raise click.ClickException(f"--namespace: {namespace!r} is not a Kubernetes namespace name")
    config = load_config(config_path)
    text = Path(config_path).read_text(encoding="utf-8")
    files = k8s_manifests(
        config, config_text=text, config_path=config_path, serving_dir=_serving_dir(), namespace=namespace
    )
    try:
        removed = write_folder(files, Path(out_dir))
    except OSError as exc:
        raise click.ClickException(f"{out_dir}: cannot write ({exc.strerror})") from None
    for name in removed:
        click.echo(f"removed stale {Path(out_dir) / name}", err=True)
    click.echo(f"wrote {len(files)} files to {out_dir}", err=True)


def _serving_dir() -> Path:
    """serving/ of the repository: under the working folder, or beside the package in a source checkout."""
    for candidate in (Path.cwd() / "serving", Path(moa_local.__file__).resolve().parent.parent / "serving"):
        if (candidate / "prometheus" / "rules").is_dir():
            return candidate
    raise click.ClickException("serving/ (the shipped rules and dashboards) not found: run from the repository's top")


@main.command()
@CONFIG_OPTION
@click.option("--gpu-memory", default="80GiB", show_default=True, help="Memory of one GPU, e.g. 80GiB or 81559MiB.")
@click.option("--models-dir", default=None, type=click.Path(file_okay=False),
              help="Read each model from DIR/<model_path's last name> instead.")  # fmt: skip
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Prompt size assumed when checking context windows against the mixtures.")  # fmt: skip
@click.option("--k8s", "cluster", is_flag=True,
              help="Plan it as `moa-local k8s` runs it: whole GPUs per pod, k8s.gpus_per_node per node.")  # fmt: skip
def plan(config_path: str, gpu_memory: str, models_dir: str | None, prompt_tokens: int, cluster: bool) -> None:
    """Check that every served model fits its GPUs (weights, KV cache, context windows); exit 1 if not."""
    from moa_local.config import load_config
    from moa_local.deploy.cluster_plan import make_cluster_plan, render_cluster_plan
    from moa_local.deploy.plan import make_plan, parse_size, render_plan

    config = load_config(config_path)
    try:
        memory = parse_size(gpu_memory)
    except ValueError as exc:
        raise click.ClickException(f"--gpu-memory: {exc}") from None
    if cluster:
        placed = make_cluster_plan(config, gpu_memory_bytes=memory, models_dir=models_dir, prompt_tokens=prompt_tokens)
        result, text = placed.plan, render_cluster_plan(placed, config_path)
    else:
        result = make_plan(config, gpu_memory_bytes=memory, models_dir=models_dir, prompt_tokens=prompt_tokens)
        text = render_plan(result, config_path)
    click.echo(text, nl=False)
    if not result.fits:
        raise click.ClickException(f"{config_path}: {len(result.problems)} problem(s); see above")


@main.command("prometheus-config")
@CONFIG_OPTION
@click.option("--gateway", default=None, help="host:port Prometheus scrapes the gateway at (default: from the config).")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Scrape and rule evaluation interval, seconds.")  # fmt: skip
@click.option("--bearer-file", default=None, help="File with a gateway key, when the gateway requires one.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here instead of standard output.")  # fmt: skip
def prometheus_config_command(
    config_path: str, gateway: str | None, interval_s: float, bearer_file: str | None, output: str | None
) -> None:
    """Print a Prometheus config that scrapes the gateway and every engine of a config."""
    from moa_local.config import load_config
    from moa_local.deploy.prometheus_config import prometheus_config, render

    config = load_config(config_path)
    document = prometheus_config(config, gateway=gateway, interval_s=interval_s, bearer_file=bearer_file)
    text = render(document, config_path)
    if output is None:
        click.echo(text, nl=False)
        return
    _write(output, text)


def _write(path: str, text: str) -> None:
    """Write a rendered file; an unwritable path is one line, not a traceback."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot write ({exc.strerror})") from None
