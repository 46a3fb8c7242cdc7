#!/usr/bin/env bash
# Benchmark custos against restic and borg on the telecom demo database.
#
#   scripts/bench.sh [--size small|1g|4g] [--json] [--keep] [--tools custos,restic,borg]
#                    [--history N] [--buffer-memory SIZE] [--threads N]
#
# In one run, on the same warm data, each tool backs the database up into a
# local repository folder, backs it up again after a ~1% change, restores the
# latest snapshot in full and verifies its repository reading every byte.
# With --history N, N more ~1% changes are each backed up (measured as
# `backup_history`, not in the table) between the initial and the measured
# incremental backup, so the incremental is measured in the steady state of
# a daily schedule (a repository of N+1 snapshots); its "added" bytes then
# count from the last of them.
# Each step is measured (wall and CPU seconds, peak RSS, bytes stored), next
# to the machine's own limits on the same file (warm read, zstd -3, BLAKE3).
# Restores are verified: custos's with sqldiff (logical), the peers' with cmp.
#
# Output: a table on stdout; with --json, one JSON object on stdout instead
# (the table then goes to stderr). Progress goes to stderr. Exit status 1 if
# any step or any restore verification fails.
#
# --buffer-memory and --threads go into custos's policy as its [resources]
# (docs/POLICY.md); without them custos runs with its defaults.
#
# Environment: CUSTOS_BIN=path uses that custos binary instead of building
# one with `cargo build --release` (CARGO_TARGET_DIR is respected).
set -euo pipefail

SIZE=small
JSON=0
KEEP=0
TOOLS="custos,restic,borg"
HISTORY=0
BUFFER_MEMORY=
THREADS=

usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="${2:?--size needs a value: small, 1g or 4g}"; shift 2 ;;
        --size=*) SIZE="${1#--size=}"; shift ;;
        --json) JSON=1; shift ;;
        --keep) KEEP=1; shift ;;
        --tools) TOOLS="${2:?--tools needs a list, e.g. custos,restic}"; shift 2 ;;
        --tools=*) TOOLS="${1#--tools=}"; shift ;;
        --history) HISTORY="${2:?--history needs a number of rounds}"; shift 2 ;;
        --history=*) HISTORY="${1#--history=}"; shift ;;
        --buffer-memory) BUFFER_MEMORY="${2:?--buffer-memory needs a size, e.g. 64MiB}"; shift 2 ;;
        --buffer-memory=*) BUFFER_MEMORY="${1#--buffer-memory=}"; shift ;;
        --threads) THREADS="${2:?--threads needs a number}"; shift 2 ;;
        --threads=*) THREADS="${1#--threads=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
case "$HISTORY" in
    ''|*[!0-9]*) echo "bench: --history must be a number of rounds (0 or more), not '$HISTORY'" >&2; exit 2 ;;
esac
case "$BUFFER_MEMORY" in
    ''|[0-9]*[KMG]iB) ;;
    *) echo "bench: --buffer-memory must be a size such as 64MiB or 1GiB, not '$BUFFER_MEMORY'" >&2; exit 2 ;;
esac
case "$THREADS" in
    '') ;;
    *[!0-9]*) echo "bench: --threads must be a number, not '$THREADS'" >&2; exit 2 ;;
esac
case "$SIZE" in
    small|1g|4g) ;;
    *) echo "bench: --size must be small, 1g or 4g, not '$SIZE'" >&2; exit 2 ;;
esac
has_tool() { case ",$TOOLS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for t in ${TOOLS//,/ }; do
    case "$t" in
        custos|restic|borg) ;;
        *) echo "bench: unknown tool '$t' in --tools (custos, restic, borg)" >&2; exit 2 ;;
    esac
done

log() { echo "bench: $*" >&2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MEASURE="$HERE/bench/measure.py"
REPORT="$HERE/bench/report.py"
NOTES=()

# --- tools -----------------------------------------------------------------
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v zstd >/dev/null || missing+=(zstd)
command -v sqldiff >/dev/null || missing+=(sqlite3-tools)
command -v cmp >/dev/null || missing+=(diffutils)
if has_tool restic && ! command -v restic >/dev/null; then missing+=(restic); fi
if has_tool borg && ! command -v borg >/dev/null; then missing+=(borgbackup); fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi
B3SUM="$(command -v b3sum || true)"
if [ -z "$B3SUM" ] && [ -x "$HOME/.cargo/bin/b3sum" ]; then B3SUM="$HOME/.cargo/bin/b3sum"; fi
if [ -z "$B3SUM" ]; then
    log "installing b3sum (cargo install b3sum)"
    if cargo install --quiet b3sum >&2 && [ -x "$HOME/.cargo/bin/b3sum" ]; then
        B3SUM="$HOME/.cargo/bin/b3sum"
    else
        NOTES+=("b3sum could not be installed: BLAKE3 reference skipped")
        log "b3sum could not be installed; the BLAKE3 reference is skipped"
    fi
fi

CUSTOS="${CUSTOS_BIN:-}"
if [ -z "$CUSTOS" ]; then
    log "building custos (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet >&2)
    CUSTOS="${CARGO_TARGET_DIR:-$ROOT/target}/release/custos"
fi
[ -x "$CUSTOS" ] || { log "no custos binary at $CUSTOS"; exit 1; }
CUSTOS="$(cd "$(dirname "$CUSTOS")" && pwd)/$(basename "$CUSTOS")"

# --- work folder -----------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/custos-bench.XXXXXX")"
cleanup() {
    if [ "$KEEP" -eq 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
mkdir -p "$WORK/data" "$WORK/logs" "$WORK/restore"
DB="$WORK/data/crm.db"

# Throwaway secrets for the peers' local test repositories; their caches and
# security folders live in the work folder too.
export RESTIC_PASSWORD="custos-bench-throwaway"
export BORG_PASSPHRASE="custos-bench-throwaway"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR="$WORK/borg-home"
export RESTIC_CACHE_DIR="$WORK/restic-cache"
export CUSTOS_LOG="${CUSTOS_LOG:-warn}"

# measure TOOL STEP INPUT_BYTES [--stored DIR]... [--stdout F] -- CMD...
measure() {
    local tool="$1" step="$2" input="$3"
    shift 3
    python3 "$MEASURE" --out "$RESULTS" --tool "$tool" --step "$step" \
        --input-bytes "$input" --stderr "$WORK/logs/$tool-$step.err" "$@"
}
file_bytes() { stat -c %s "$1"; }
# Reads a repository folder once, so that a restore or a check starts with
# its repository in the page cache, as every backup starts with the
# database there. Without it the figure depends on how much of the
# repository the kernel has evicted since it was written (some kernels
# page out cache untouched for a minute; custos writes packs around the
# cache) and on the disk's latency that day (docs/PERFORMANCE.md, "Method").
warm() { find "$@" -type f -exec cat {} + >/dev/null 2>&1 || true; }

# --- data ------------------------------------------------------------------
log "generating the $SIZE telecom database (seed 1)"
"$CUSTOS" demo-data generate --out "$DB" --size "$SIZE" --seed 1 >&2
DB_BYTES="$(file_bytes "$DB")"
cat "$DB" >/dev/null # warm the page cache once

# --- reference limits ------------------------------------------------------
log "measuring the machine's reference limits"
measure reference read "$DB_BYTES" -- cat "$DB"
measure reference zstd3_single "$DB_BYTES" -- zstd -3 --single-thread -c "$DB"
# The compressed size, from a separate unmeasured run (writing the output to
# a file would slow the measured one down).
ZSTD3_BYTES="$(zstd -3 --single-thread -c "$DB" | wc -c)"
measure reference zstd3_all "$DB_BYTES" -- zstd -3 -T0 -c "$DB"
if [ -n "$B3SUM" ]; then
    measure reference blake3_single "$DB_BYTES" -- "$B3SUM" --num-threads 1 "$DB"
    measure reference blake3_all "$DB_BYTES" -- "$B3SUM" "$DB"
fi

# --- repositories ----------------------------------------------------------
CDIR="$WORK/custos"
POLICY="$CDIR/policy.toml"
RESTIC_REPO="$WORK/restic"
BORG_REPO="$WORK/borg"
if has_tool custos; then
    mkdir -p "$CDIR"
    "$CUSTOS" keys init --out "$CDIR/keys" >&2
    cat >"$POLICY" <<TOML
# Benchmark policy: the telecom demo database, one local target.
[policy]
name = "bench-crm"

[store]
kind = "sqlite"
path = "$DB"
epoch = "quarter"

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "subscriptions"
class = "business"
subject = "customer_id"

[[store.tables]]
name = "tickets"
class = "service"
subject = "customer_id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = { column = "started_at", every = "month" }

[keys]
identity = "$CDIR/keys/service.age"
recipients = []
vault = ["file://$CDIR/vault"]

[[targets]]
name = "primary"
url = "file://$CDIR/target"
TOML
    if [ -n "$BUFFER_MEMORY$THREADS" ]; then
        {
            echo "[resources]"
            if [ -n "$BUFFER_MEMORY" ]; then echo "buffer_memory = \"$BUFFER_MEMORY\""; fi
            if [ -n "$THREADS" ]; then echo "threads = $THREADS"; fi
        } >>"$POLICY"
        NOTES+=("custos ran with [resources]${BUFFER_MEMORY:+ buffer_memory = $BUFFER_MEMORY}${THREADS:+ threads = $THREADS}")
    fi
    "$CUSTOS" init --policy "$POLICY" >&2
fi
if has_tool restic; then restic --quiet -r "$RESTIC_REPO" init >&2; fi
if has_tool borg; then
    borg init --encryption=repokey "$BORG_REPO" >"$WORK/logs/borg-init.log" 2>&1 ||
        { cat "$WORK/logs/borg-init.log" >&2; exit 1; }
fi

# backup STEP INPUT_BYTES [ARCHIVE]: ARCHIVE names borg's archive (default STEP)
backup() {
    local step="$1" input="$2" archive="${3:-$1}"
    if has_tool custos; then
        log "custos: $step"
        measure custos "$step" "$input" --stored "$CDIR/target" --stored "$CDIR/vault" \
            --stdout "$WORK/custos-$step.json" -- "$CUSTOS" backup --policy "$POLICY" --json
    fi
    if has_tool restic; then
        log "restic: $step"
        (cd "$WORK/data" && measure restic "$step" "$input" --stored "$RESTIC_REPO" \
            --stdout "$WORK/logs/restic-$step.out" \
            -- restic -r "$RESTIC_REPO" backup --host bench crm.db)
    fi
    if has_tool borg; then
        log "borg: $step"
        (cd "$WORK/data" && measure borg "$step" "$input" --stored "$BORG_REPO" \
            --stdout "$WORK/logs/borg-$step.out" \
            -- borg create --compression zstd,3 "$BORG_REPO::$archive" crm.db)
    fi
}

backup backup_initial "$DB_BYTES"

for ((round = 1; round <= HISTORY; round++)); do
    log "history round $round of $HISTORY: changing about 1% (seed $((100 + round))), then backing up"
    "$CUSTOS" demo-data mutate --db "$DB" --fraction 0.01 --seed "$((100 + round))" >&2
    backup backup_history "$(file_bytes "$DB")" "history-$round"
done
if [ "$HISTORY" -gt 0 ]; then
    NOTES+=("history: $HISTORY change-and-backup rounds before the measured incremental (a repository of $((HISTORY + 1)) snapshots); its added bytes count from the last round")
fi

log "changing about 1% of the database (seed 2)"
# Every tool backs up the same changed file next.
"$CUSTOS" demo-data mutate --db "$DB" --fraction 0.01 --seed 2 >&2
DB_BYTES_MUTATED="$(file_bytes "$DB")"
cat "$DB" >/dev/null

backup backup_incremental "$DB_BYTES_MUTATED"

# --- restore ---------------------------------------------------------------
VERIFY=()
if has_tool custos; then
    log "custos: restore"
    warm "$CDIR/target" "$CDIR/vault"
    measure custos restore "$DB_BYTES_MUTATED" --stdout "$WORK/custos-restore.json" \
        -- "$CUSTOS" restore --policy "$POLICY" --snapshot latest --to "$WORK/restore/custos.db" --json
    diff_out="$(sqldiff "$DB" "$WORK/restore/custos.db" 2>&1)" || diff_out="sqldiff failed: $diff_out"
    if [ -z "$diff_out" ]; then
        VERIFY+=(--verify "custos=ok: sqldiff prints nothing")
    else
        printf '%s\n' "$diff_out" >"$WORK/logs/custos-sqldiff.txt"
        VERIFY+=(--verify "custos=FAILED: sqldiff printed $(wc -l <"$WORK/logs/custos-sqldiff.txt") lines")
    fi
fi
if has_tool restic; then
    log "restic: restore"
    warm "$RESTIC_REPO"
    mkdir -p "$WORK/restore/restic"
    measure restic restore "$DB_BYTES_MUTATED" --stdout "$WORK/logs/restic-restore.out" \
        -- restic -r "$RESTIC_REPO" restore latest --target "$WORK/restore/restic"
    got="$(find "$WORK/restore/restic" -type f -name crm.db | head -n 1)"
    if [ -n "$got" ] && cmp -s "$DB" "$got"; then
        VERIFY+=(--verify "restic=ok: cmp identical")
    else
        VERIFY+=(--verify "restic=FAILED: restored file missing or different")
    fi
fi
if has_tool borg; then
    log "borg: restore"
    warm "$BORG_REPO"
    mkdir -p "$WORK/restore/borg"
    (cd "$WORK/restore/borg" && measure borg restore "$DB_BYTES_MUTATED" \
        -- borg extract "$BORG_REPO::backup_incremental")
    if cmp -s "$DB" "$WORK/restore/borg/crm.db"; then
        VERIFY+=(--verify "borg=ok: cmp identical")
    else
        VERIFY+=(--verify "borg=FAILED: restored file missing or different")
    fi
fi
rm -rf "$WORK/restore"

# --- full verification -----------------------------------------------------
if has_tool custos; then
    log "custos: check --read-data"
    warm "$CDIR/target" "$CDIR/vault"
    measure custos check "$DB_BYTES_MUTATED" --stdout "$WORK/custos-check.json" \
        -- "$CUSTOS" check --policy "$POLICY" --read-data --json
fi
if has_tool restic; then
    log "restic: check --read-data"
    warm "$RESTIC_REPO"
    measure restic check "$DB_BYTES_MUTATED" --stdout "$WORK/logs/restic-check.out" \
        -- restic -r "$RESTIC_REPO" check --read-data
fi
if has_tool borg; then
    log "borg: check --verify-data"
    warm "$BORG_REPO"
    measure borg check "$DB_BYTES_MUTATED" -- borg check --verify-data "$BORG_REPO"
fi

# --- report ----------------------------------------------------------------
VERSIONS=(--version "custos=$("$CUSTOS" --version | awk '{print $NF}')")
if has_tool restic; then VERSIONS+=(--version "restic=$(restic version | awk '{print $2}')"); fi
if has_tool borg; then VERSIONS+=(--version "borg=$(borg --version | awk '{print $NF}')"); fi
VERSIONS+=(--version "zstd=$(zstd --version | grep -o 'v[0-9.]*' | head -n 1)")
if [ -n "$B3SUM" ]; then VERSIONS+=(--version "b3sum=$("$B3SUM" --version | awk '{print $NF}')"); fi
VERSIONS+=(--version "sqlite=$(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')")
CJSON=()
for s in backup_initial backup_incremental restore check; do
    if [ -s "$WORK/custos-$s.json" ]; then CJSON+=(--custos-json "$s=$WORK/custos-$s.json"); fi
done
NOTE_ARGS=()
for n in "${NOTES[@]+"${NOTES[@]}"}"; do NOTE_ARGS+=(--note "$n"); done
REPORT_ARGS=(--results "$RESULTS" --size "$SIZE" --db-bytes "$DB_BYTES"
    --db-bytes-mutated "$DB_BYTES_MUTATED" --zstd3-bytes "$ZSTD3_BYTES" "${VERSIONS[@]}"
    "${VERIFY[@]+"${VERIFY[@]}"}" "${CJSON[@]+"${CJSON[@]}"}" "${NOTE_ARGS[@]+"${NOTE_ARGS[@]}"}")
if [ "$JSON" -eq 1 ]; then
    python3 "$REPORT" "${REPORT_ARGS[@]}" >&2
    python3 "$REPORT" "${REPORT_ARGS[@]}" --json
else
    python3 "$REPORT" "${REPORT_ARGS[@]}"
fi

for v in "${VERIFY[@]+"${VERIFY[@]}"}"; do
    case "$v" in
        *=FAILED*) log "restore verification failed: ${v#*=}"; exit 1 ;;
    esac
done
