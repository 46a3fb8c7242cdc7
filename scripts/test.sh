#!/usr/bin/env bash
# Runs the whole test suite, first installing what it needs and is missing.
# Idempotent; quiet when there is nothing to install. Extra arguments are
# passed to `cargo test` (e.g. `scripts/test.sh -- --nocapture`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_updated=0
apt_install() {
    # Installs Debian packages; runs `apt-get update` once per invocation.
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "test.sh: need root (or sudo) to install: $*" >&2
            exit 1
        fi
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Tools the suite uses, as "command:debian-package".
needs=(
    "sqldiff:sqlite3-tools"
    "chromium:chromium"
    "chromedriver:chromium-driver"
)
missing=()
for need in "${needs[@]}"; do
    cmd="${need%%:*}"
    pkg="${need#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${missing[*]}" >&2
        apt_install "${missing[@]}"
    else
        echo "test.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
fi

# moto (an S3 server whose conditional puts have exactly one winner) for
# the lease tests, in a venv under the target dir; skipped without network.
moto_venv="${CARGO_TARGET_DIR:-target}/moto-venv"
if [ ! -x "$moto_venv/bin/moto_server" ] && command -v python3 >/dev/null 2>&1; then
    echo "test.sh: installing moto into $moto_venv" >&2
    if python3 -m venv "$moto_venv" \
        && "$moto_venv/bin/pip" install -q 'moto[s3]==5.2.5' flask flask-cors; then
        :
    else
        echo "test.sh: WARNING: cannot install moto; the two-daemon lease test will be skipped" >&2
        rm -rf "$moto_venv"
    fi
fi
if [ -x "$moto_venv/bin/moto_server" ]; then
    export CUSTOS_MOTO_SERVER="$(cd "$moto_venv/bin" && pwd)/moto_server"
fi
# PostgreSQL 15 (server and client tools) for tests/postgres.rs, which start
# their own cluster; Debian's packages put them under /usr/lib/postgresql/15.
if [ -z "${CUSTOS_PG_BINDIR:-}" ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing postgresql-15 postgresql-client-15" >&2
        apt_install postgresql-15 postgresql-client-15
    else
        echo "test.sh: PostgreSQL 15 is missing and there is no apt-get to install it;" \
            "set CUSTOS_PG_BINDIR to its bin folder (or CUSTOS_SKIP_POSTGRES=1 to skip)" >&2
        exit 1
    fi
fi
# pgq, an extension with configuration tables and a configuration sequence,
# for the test of extension configuration rows (Debian's package, matching
# the server above; not installable without apt-get).
if [ -z "${CUSTOS_PG_BINDIR:-}" ] && [ ! -f /usr/share/postgresql/15/extension/pgq.control ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing postgresql-15-pgq3" >&2
        apt_install postgresql-15-pgq3
    else
        echo "test.sh: WARNING: cannot install postgresql-15-pgq3; the pgq test will fail" >&2
    fi
fi

cargo --version
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: a failing test binary does not hide the results of the
# ones after it.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "suite: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
