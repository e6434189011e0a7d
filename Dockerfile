# One image for every promoter-relay service; docker-compose picks the command.
FROM python:3.11-slim

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
