#!/usr/bin/env bash
# THE RUN COMMAND: bring up the whole platform locally and leave it running.
#   1. deployment/stack-up.sh        PostgreSQL, RabbitMQ, OpenBao, s3s-fs
#   2. deployment/vault-provision.sh policies, secrets, per-service tokens
#   3. cargo build --release --bins
#   4. (re)start every service of deployment/vault/secrets.json that has a
#      binary in target/release/, then wait for the gateway to answer
#      /health and /v1/ping (a round trip to the registry over RabbitMQ).
# Stop with deployment/down.sh (services) or deployment/down.sh --all.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEALTH_TIMEOUT="${TH_HEALTH_TIMEOUT:-60}"
TARGET_DIR="${CARGO_TARGET_DIR:-$TH_ROOT/target}"
GATEWAY_URL="http://$TH_HOST:$TH_GATEWAY_HTTP_PORT"

STARTED=()
SKIPPED=()

build() {
    local log="$TH_LOGS/build.log"
    cd "$TH_ROOT"
    if [[ -t 2 ]]; then
        # Interactive: let cargo show its progress and diagnostics.
        cargo build --release --bins || die "cargo build --release --bins failed"
    else
        info "building: cargo build --release --bins (log: ${log#"$TH_ROOT"/})"
        if ! cargo build --release --bins >"$log" 2>&1 </dev/null; then
            show_log_tail "$log" 80
            die "cargo build --release --bins failed"
        fi
    fi
}

# ensure_port_free PORT WHAT: refuse to start when a foreign process holds PORT.
ensure_port_free() {
    local deadline=$((SECONDS + 15))
    while port_open "$TH_HOST" "$1"; do
        ((SECONDS < deadline)) || die "$TH_HOST:$1 ($2) is taken by another process; stop it first"
        sleep 0.3
    done
}

start_service() {
    local svc="$1" bin="$2" log="$TH_LOGS/$1.log" port
    port="$(metrics_port "$svc")"
    if daemon_running "$svc"; then
        info "restarting $svc (pid $(daemon_pid "$svc"))"
        stop_daemon "$svc" 20
    fi
    ensure_port_free "$port" "$svc metrics"
    [[ "$svc" == gateway ]] && ensure_port_free "$TH_GATEWAY_HTTP_PORT" "gateway HTTP"
    [[ -s "$TH_TOKENS/$svc" ]] || die "no token for $svc in .run/state/tokens; did vault-provision.sh run?"
    # Keep the previous run's log next to the new one.
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    (
        unset BAO_ADDR BAO_TOKEN
        export VAULT_ADDR="$TH_VAULT_ADDR"
        VAULT_TOKEN="$(cat "$TH_TOKENS/$svc")"
        export VAULT_TOKEN
        export TALLYHOUSE_AMQP_URIS="$TH_AMQP_URIS"
        export TALLYHOUSE_ENVIRONMENT=local
        export TALLYHOUSE_METRICS_ADDR="$TH_HOST:$port"
        if [[ "$svc" == gateway ]]; then
            export TALLYHOUSE_HTTP_ADDR="$TH_HOST:$TH_GATEWAY_HTTP_PORT"
        fi
        # A service reading `database` owns tallyhouse_<svc>, made by vault-provision.sh.
        if service_reads "$svc" database; then
            export TALLYHOUSE_DATABASE_HOST="$TH_HOST"
            export TALLYHOUSE_DATABASE_PORT="$TH_PG_PORT"
            TALLYHOUSE_DATABASE_NAME="$(service_db_name "$svc")"
            export TALLYHOUSE_DATABASE_NAME
        fi
        if [[ "$svc" == ingest ]]; then
            # The owner (the local superuser, trust auth on loopback) migrates
            # the time-series schema and grants the service role
            # SELECT/INSERT only; the service itself runs as that role.
            TALLYHOUSE_ADMIN_DATABASE_URL="postgres://postgres@$TH_HOST:$TH_PG_PORT/$TALLYHOUSE_DATABASE_NAME" \
                TALLYHOUSE_SERVICE_ROLE="$(service_db_role ingest)" \
                "$bin" migrate >>"$log" 2>&1 || {
                show_log_tail "$log" 30
                die "ingest migrate failed"
            }
            start_daemon "$svc" "$log" "$bin" serve
        else
            start_daemon "$svc" "$log" "$bin"
        fi
    )
    STARTED+=("$svc")
}

fail_with_logs() {
    local svc
    err "$1"
    for svc in "${STARTED[@]}"; do
        daemon_running "$svc" || err "$svc is not running"
        show_log_tail "$TH_LOGS/$svc.log" 30
    done
    die "the services stay as they are; stop them with deployment/down.sh"
}

wait_for_gateway() {
    local deadline code
    if [[ " ${STARTED[*]} " != *" gateway "* ]]; then
        info "note: gateway not started, skipping the /health and /v1/ping checks"
        return 0
    fi
    wait_for_http "$GATEWAY_URL/health" "$HEALTH_TIMEOUT" gateway ||
        fail_with_logs "gateway did not answer $GATEWAY_URL/health"
    deadline=$((SECONDS + HEALTH_TIMEOUT))
    while :; do
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$GATEWAY_URL/v1/ping" 2>/dev/null || true)"
        [[ "$code" == 200 ]] && break
        daemon_running gateway || fail_with_logs "gateway exited"
        ((SECONDS < deadline)) ||
            fail_with_logs "$GATEWAY_URL/v1/ping did not return 200 within ${HEALTH_TIMEOUT}s (last status: ${code:-none})"
        sleep 1
    done
    if [[ " ${STARTED[*]} " == *" ingest "* ]]; then
        deadline=$((SECONDS + HEALTH_TIMEOUT))
        until [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$GATEWAY_URL/v1/keys" 2>/dev/null || true)" == 200 ]]; do
            daemon_running ingest || fail_with_logs "ingest exited"
            ((SECONDS < deadline)) || fail_with_logs "$GATEWAY_URL/v1/keys (ingest) did not return 200 within ${HEALTH_TIMEOUT}s"
            sleep 1
        done
    fi
}

print_table() {
    local svc pid addr
    echo "Tallyhouse is running:"
    print_stack_table
    for svc in "${STARTED[@]}"; do
        pid="$(daemon_pid_or "$svc" dead)"
        addr="metrics $TH_HOST:$(metrics_port "$svc")"
        if [[ "$svc" == gateway ]]; then
            status_row "$svc" "$GATEWAY_URL" "$pid" ".run/logs/$svc.log"
            status_row "" "$addr" "" ""
        else
            status_row "$svc" "$addr" "$pid" ".run/logs/$svc.log"
        fi
    done
    if ((${#SKIPPED[@]} > 0)); then
        echo "Not built (skipped): ${SKIPPED[*]}"
    fi
    echo "Stop the services: deployment/down.sh   (also OpenBao and s3s-fs: deployment/down.sh --all)"
}

main() {
    local svc bin services
    ensure_run_dirs
    TH_STACK_QUIET=1 "$TH_DEPLOY/stack-up.sh"
    "$TH_DEPLOY/vault-provision.sh"
    build
    mapfile -t services < <(services_from_json)
    ((${#services[@]} > 0)) || die "no services in deployment/vault/secrets.json"
    for svc in "${services[@]}"; do
        bin="$TARGET_DIR/release/$svc"
        if [[ ! -x "$bin" ]]; then
            info "note: no ${bin#"$TH_ROOT"/}; $svc is not built yet, skipping it"
            SKIPPED+=("$svc")
            continue
        fi
        start_service "$svc" "$bin"
    done
    ((${#STARTED[@]} > 0)) || die "no service binary found in ${TARGET_DIR#"$TH_ROOT"/}/release/"
    wait_for_gateway
    for svc in "${STARTED[@]}"; do
        daemon_running "$svc" || fail_with_logs "$svc exited after start"
    done
    print_table
}

main "$@"
