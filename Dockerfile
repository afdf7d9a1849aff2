# One image for every process of the engine: the migrate job (`saga db setup`), the
# coordinator, one participant per journey and the worker; compose picks the command.
# Only PyPI is needed at build time.

# Install into a virtualenv in a build stage and copy only that: the image holds neither
# the sources nor pip's cache. Both stages share the base image, so the venv's paths hold.
FROM python:3.11-slim AS build
RUN python -m venv /opt/saga
WORKDIR /src
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY journeys ./journeys
COPY migrations ./migrations
# The otel extra: tracing turns on where OTEL_EXPORTER_OTLP_ENDPOINT is set.
RUN /opt/saga/bin/pip install --no-cache-dir ".[otel]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 APP_ENV=production PATH=/opt/saga/bin:$PATH
COPY --from=build /opt/saga /opt/saga
# pg_dump and pg_restore for `saga db restore-drill` (Debian's client is at least as new
# as the PostgreSQL 15 server, which is what the drill requires).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 saga \
    && useradd --system --uid 10001 --gid saga --home-dir /app --shell /usr/sbin/nologin saga
# The settings loader reads .env.$APP_ENV from the working directory: the production
# template, ${VAR} references only; the secrets come from the environment.
WORKDIR /app
COPY .env.production ./
# Not root: the engine needs no privilege inside the container.
USER 10001:10001
# Health checks run `saga health` (compose sets them), so no HEALTHCHECK here.
ENTRYPOINT ["saga"]
