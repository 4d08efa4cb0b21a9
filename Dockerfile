# The moa-local gateway: `moa-local serve` in a small Python image.
# Built by `docker compose -f docker-compose.gpu.yml build` (or up); the compose
# file mounts the config read-only at /config/config.yaml. The engines are
# separate vLLM containers; this image holds no model and needs no GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY moa_local ./moa_local
RUN pip install . && rm -rf /app

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin moa
USER moa
WORKDIR /home/moa

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

CMD ["moa-local", "serve", "--config", "/config/config.yaml", "--host", "0.0.0.0"]
