# One image for every process of the engine (migrate job now; coordinator, participants
# and workers as they arrive). Only PyPI is needed at build time.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 APP_ENV=production
WORKDIR /app
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY journeys ./journeys
COPY migrations ./migrations
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["saga"]
