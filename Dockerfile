# One image for the API and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADDOCTOR_DATA_DIR=/data

# Run as an unprivileged user; /data is the volume shared by the API and the workers.
RUN useradd --create-home --uid 10001 graddoctor \
    && mkdir -p /data && chown graddoctor /data

WORKDIR /app
# Dependencies first, so code edits do not re-download torch. (For a smaller image, install
# the CPU-only torch build from PyTorch's own package index before this step.)
COPY pyproject.toml README.md ./
RUN mkdir diagnostics service && touch diagnostics/__init__.py service/__init__.py \
    && pip install . && pip uninstall -y graddoctor
COPY diagnostics ./diagnostics
COPY service ./service
COPY docs/guide ./docs/guide
RUN pip install --no-deps .

USER graddoctor
EXPOSE 8000
VOLUME ["/data"]
CMD ["graddoctor", "serve", "--host", "0.0.0.0", "--port", "8000"]
