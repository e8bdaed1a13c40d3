#!/usr/bin/env bash
# Install what the benchmark needs on a fresh machine: the peer servers from
# Debian, Centrifugo and Mercure built with Go from the module proxy, FerretDB
# (for ours-mongodb) and the bench's own Python packages in bench/.venv.
# Idempotent: a second run finds everything in place and changes nothing.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEBIAN_PACKAGES=(nginx-light libnginx-mod-nchan pushpin redis-server)

missing_debian_packages() {
    local package
    for package in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || echo "$package"
    done
}

install_debian_packages() {
    local missing
    missing="$(missing_debian_packages)"
    if [[ -z "$missing" ]]; then
        echo "install: Debian packages already present"
        return
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "install: need root for apt-get (missing: $missing)" >&2
        return 1
    fi
    # The bench starts every server itself, on loopback, with its own config:
    # keep the packages' init scripts from starting system-wide copies that
    # would hold ports and CPU during the measurements.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get update -qq
    # shellcheck disable=SC2086  # one package a word on purpose
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        || { [[ $created_policy == 1 ]] && rm -f "$policy"; return 1; }
    [[ $created_policy == 1 ]] && rm -f "$policy"
    echo "install: installed $(echo $missing | tr '\n' ' ')"
}

install_python_packages() {
    # A venv of the bench's own keeps matplotlib, uvloop, flask-sse and redis
    # out of the server's .venv, so measuring can never change what is measured.
    local venv="$BENCH_DIR/.venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.requirements.sha256"
    local wanted
    wanted="$(sha256sum "$BENCH_DIR/requirements.txt" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        echo "install: bench/.venv already up to date"
        return
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$BENCH_DIR/requirements.txt"
    echo "$wanted" >"$stamp"
    echo "install: bench/.venv ready"
}

install_ferretdb() {
    # ours-mongodb: our server on its MongoDB store, with FerretDB (MongoDB wire
    # protocol, SQLite backend) standing in for MongoDB. The repo's CI script
    # builds it from the Go module proxy, pinned, into a cache (idempotent).
    # Without Go the system is skipped, with a line saying so; the rest runs.
    local binary
    if binary="$(bash "$BENCH_DIR/../.ci/ferretdb-build" | tail -n 1)"; then
        echo "install: FerretDB at $binary"
    else
        echo "install: FerretDB not built; ours-mongodb will be skipped" >&2
    fi
}

# Go-built peers live outside the repo, one directory per pinned version,
# so a second run (or a later session) finds them and builds nothing.
PEER_BUILDS="${SSE_ROOMS_CACHE:-$HOME/.cache/sse-rooms}"
CENTRIFUGO_VERSION=v6.9.1
MERCURE_VERSION=v0.21.4

install_centrifugo() {
    local dir="$PEER_BUILDS/centrifugo-$CENTRIFUGO_VERSION"
    if [[ -x "$dir/centrifugo" ]]; then
        echo "install: Centrifugo $CENTRIFUGO_VERSION already built"
        return
    fi
    if ! command -v go >/dev/null; then
        echo "install: no Go; centrifugo will be skipped" >&2
        return
    fi
    # Its go.mod has no replace directive, so `go install` builds it as released (~7 min on 2 cores).
    echo "install: building Centrifugo $CENTRIFUGO_VERSION (go install, several minutes)"
    GOBIN="$dir" go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION" \
        || echo "install: Centrifugo not built; centrifugo will be skipped" >&2
}

install_mercure() {
    local dir="$PEER_BUILDS/mercure-$MERCURE_VERSION"
    if [[ -x "$dir/caddy" ]]; then
        echo "install: Mercure $MERCURE_VERSION already built"
        return
    fi
    if ! command -v go >/dev/null; then
        echo "install: no Go; mercure will be skipped" >&2
        return
    fi
    # The Caddy module's go.mod has a replace directive, so `go install` refuses
    # it: bench/peers/mercure is the small main package xcaddy would generate,
    # pinned by its go.mod and go.sum. The checksum database has no entry for
    # the mercure modules (its lookup answers 404 here), so they are checked
    # against go.sum only.
    echo "install: building Mercure $MERCURE_VERSION (Caddy module, ~2 min)"
    mkdir -p "$dir"
    (cd "$BENCH_DIR/peers/mercure" \
        && GONOSUMDB=github.com/dunglas/mercure GOFLAGS=-mod=readonly \
           go build -trimpath -o "$dir/caddy" .) \
        || echo "install: Mercure not built; mercure will be skipped" >&2
}

install_debian_packages
install_ferretdb
install_centrifugo
install_mercure
install_python_packages
