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

cargo --version
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "suite: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
