#!/usr/bin/env bash
# The Docker engine and local base image behind `make compose-test` (tests/compose/stack.py).
#
# No image registry is reachable here, so the test cannot pull python:3.11-slim or redis:7.2-alpine:
# it builds one local Debian base with debootstrap (python3 for the relay's images, redis-server for
# the redis service), cached in the engine under a tag that names its content. A Docker engine
# already answering is used as it is; otherwise one is started (vfs storage: no overlay mounts
# needed) and stopped again by the command that started it, by its own pid.
#
#   engine.sh install      apt-get the tools that are missing (docker.io, docker-compose, debootstrap)
#   engine.sh probe        can an engine run here? one line saying why not, exit 1 when it cannot
#   engine.sh run CMD...   engine up, base image ready, CMD run with RELAY_BASE_IMAGE and REDIS_IMAGE
#                          set, engine stopped again if this started it; exits with CMD's status
set -euo pipefail

STATE_DIR=${PROMOTER_RELAY_ENGINE_DIR:-/run/promoter-relay-compose-test}
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates,redis-server,redis-tools
BASE_SUITE=bookworm
STARTED_PID=""
REASON=""

say() { echo "compose-test: $*" >&2; }

install_tools() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 \
        || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "missing ${missing[*]}, and installing them needs root"
        return 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}

engine_answers() { docker info >/dev/null 2>&1; }

# Starts dockerd unless an engine answers; sets STARTED_PID when it started one, REASON when it fails.
start_engine() {
    if engine_answers; then
        say "using the Docker engine already running"
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        REASON="dockerd is not installed (engine.sh install)"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        REASON="no Docker engine answers, and starting dockerd needs root"
        return 1
    fi
    mkdir -p "$STATE_DIR"
    dockerd --storage-driver=vfs >"$STATE_DIR/dockerd.log" 2>&1 &
    STARTED_PID=$!
    echo "$STARTED_PID" >"$STATE_DIR/dockerd.pid"
    for _ in $(seq 90); do
        if engine_answers; then
            say "started dockerd (pid $STARTED_PID, log $STATE_DIR/dockerd.log)"
            return 0
        fi
        kill -0 "$STARTED_PID" 2>/dev/null || break
        sleep 1
    done
    local why
    why=$(grep -E 'level=(fatal|error)' "$STATE_DIR/dockerd.log" | tail -n 1 | sed -E 's/.*msg="([^"]*)".*/\1/')
    stop_engine
    REASON="dockerd did not start: ${why:-no answer within 90 s}"
    return 1
}

stop_engine() {
    [ -n "$STARTED_PID" ] || return 0
    kill -TERM "$STARTED_PID" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$STARTED_PID" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$STARTED_PID" 2>/dev/null; then
        kill -KILL "$STARTED_PID" 2>/dev/null || true
    fi
    wait "$STARTED_PID" 2>/dev/null || true
    rm -f "$STATE_DIR/dockerd.pid"
    say "stopped the dockerd it started (pid $STARTED_PID)"
    STARTED_PID=""
}

# The tag names what the image holds: the recipe below, the suite, the packages, and the extra CA
# certificates of this host (an intercepting egress proxy here: pip inside image builds must trust
# what the host trusts).
base_tag() {
    {
        declare -f ensure_base
        echo "$BASE_SUITE $BASE_PACKAGES"
        cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
    } | sha256sum | cut -c1-12
}

ensure_base() {
    local name dir
    name="promoter-relay-base:$BASE_SUITE-$(base_tag)"
    if docker image inspect "$name" >/dev/null 2>&1; then
        say "base image $name (cached)"
        echo "$name"
        return 0
    fi
    say "building base image $name with debootstrap (about a minute)"
    dir=$(mktemp -d /var/tmp/promoter-relay-base.XXXXXX)
    chmod 755 "$dir" # the image's / (mktemp makes it 0700, and the relay runs as a plain user)
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$dir" \
        >"$dir.log" 2>&1; then
        tail -n 5 "$dir.log" >&2
        rm -rf "$dir" "$dir.log"
        return 1
    fi
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
        chroot "$dir" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/locale
    tar -C "$dir" -c . | docker import - "$name" >/dev/null
    rm -rf "$dir" "$dir.log"
    say "base image $name built"
    echo "$name"
}

run() {
    install_tools
    local base status=0
    if ! start_engine; then
        say "$REASON"
        return 3
    fi
    trap stop_engine EXIT
    base=$(ensure_base)
    RELAY_BASE_IMAGE=$base REDIS_IMAGE=$base "$@" || status=$?
    return "$status"
}

probe() {
    if ! start_engine; then
        echo "$REASON"
        return 1
    fi
    stop_engine
}

case "${1:-}" in
    install) install_tools ;;
    probe) probe ;;
    run)
        shift
        run "$@"
        ;;
    *)
        echo "usage: $0 install | probe | run CMD..." >&2
        exit 2
        ;;
esac
