#!/usr/bin/env bash
# THE RUN COMMAND: bring up the whole platform locally and leave it running.
#   1. deployment/stack-up.sh        PostgreSQL, RabbitMQ, OpenBao, s3s-fs
#   2. deployment/vault-provision.sh policies, secrets, per-service tokens
#   3. cargo build --release --bins
#   4. (re)start every service of deployment/vault/secrets.json that has a
#      binary in target/release/, then wait for the gateway to answer
#      /health and /v1/ping (a round trip to the registry over RabbitMQ),
#      and for auth to answer /ready on its metrics port (9184), and query
#      on its own (9183).
#   5. register the end-to-end canary's submitter, key and back-office user
#      (vault-provision.sh --register-canary) and (re)start the canary,
#      `tallyhouse canary` (a round every 60 s through the gateway; metrics
#      on 127.0.0.1:9185), when secrets.json has it and the CLI is built.
#   6. (re)start Prometheus (Debian's `prometheus`, installed if missing) on
#      127.0.0.1:9090 with .run/prometheus/prometheus.yml: every started
#      service's metrics port (job = tallyhouse-<service>-metrics, as in
#      production), the canary's, and the alert rules of grafana/alerts/.
# Stop with deployment/down.sh (services and Prometheus) or deployment/down.sh --all.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEALTH_TIMEOUT="${TH_HEALTH_TIMEOUT:-60}"
TARGET_DIR="${CARGO_TARGET_DIR:-$TH_ROOT/target}"
GATEWAY_URL="http://$TH_HOST:$TH_GATEWAY_HTTP_PORT"

STARTED=()
SKIPPED=()
PROMETHEUS_PORT="${TH_PROMETHEUS_PORT:-9090}"
PROMETHEUS_DIR="$TH_RUN/prometheus"
PROMETHEUS_UP=0
# The canary (secrets.json "canary", run as `tallyhouse canary`).
CANARY_PORT="${TH_CANARY_METRICS_PORT:-9185}"
CANARY_UP=0

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
    [[ -s "$TH_STATE/approle/$svc/secret_id" ]] ||
        die "no AppRole secret id for $svc in .run/state/approle; did vault-provision.sh run?"
    # Keep the previous run's log next to the new one.
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    (
        unset BAO_ADDR BAO_TOKEN VAULT_TOKEN
        export VAULT_ADDR="$TH_VAULT_ADDR"
        # AppRole: the role id and secret id reach the process through its
        # environment only (never its command line).
        TALLYHOUSE_VAULT_ROLE_ID="$(cat "$TH_STATE/approle/$svc/role_id")"
        TALLYHOUSE_VAULT_SECRET_ID="$(cat "$TH_STATE/approle/$svc/secret_id")"
        export TALLYHOUSE_VAULT_ROLE_ID TALLYHOUSE_VAULT_SECRET_ID
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
            TALLYHOUSE_DATABASE_NAME="$(service_db_name "$(database_of "$svc")")"
            export TALLYHOUSE_DATABASE_NAME
            # Leased logins from OpenBao's database secrets engine (see
            # vault-provision.sh), each a member of the service's own role,
            # which every session switches to.
            TALLYHOUSE_DATABASE_VAULT_ROLE="$(policy_prefix)$svc"
            export TALLYHOUSE_DATABASE_VAULT_ROLE
            TALLYHOUSE_DATABASE_GROUP_ROLE="$(service_db_role "$svc")"
            export TALLYHOUSE_DATABASE_GROUP_ROLE
        fi
        if [[ "$svc" == ingest ]]; then
            # The owner (the local superuser, trust auth on loopback) migrates
            # the time-series schema and grants the service role
            # SELECT/INSERT only; the service itself runs as that role.
            TALLYHOUSE_ADMIN_DATABASE_URL="postgres://postgres@$TH_HOST:$TH_PG_PORT/$TALLYHOUSE_DATABASE_NAME" \
                TALLYHOUSE_SERVICE_ROLE="$(service_db_role ingest)" \
                TALLYHOUSE_READER_ROLE="$(reader_roles_of ingest)" \
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

# service_command SERVICE: the command a process of secrets.json runs when it
# is not a binary named after it ("command": the canary's `tallyhouse
# canary`), space separated; empty for the others.
service_command() {
    th_python - "$TH_SECRETS_JSON" "$1" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    doc = json.load(f)
print(" ".join(doc["services"].get(sys.argv[2], {}).get("command", [])))
PY
}

# start_canary: registers the canary (its submitter, key and back-office
# user, from its Vault secret) and (re)starts `tallyhouse canary` with its
# AppRole, through the gateway, metrics on $CANARY_PORT. Skipped (with a
# note) when the CLI is not built or the gateway did not start; a canary
# that does not come up is a warning: the platform itself is up.
start_canary() {
    local svc=canary log="$TH_LOGS/canary.log" bin
    local -a cmd
    read -r -a cmd <<<"$(service_command "$svc")"
    ((${#cmd[@]} > 0)) || return 0
    bin="$TARGET_DIR/release/${cmd[0]}"
    if [[ ! -x "$bin" ]]; then
        info "note: no ${bin#"$TH_ROOT"/}; the canary is not started"
        SKIPPED+=("$svc")
        return 0
    fi
    if [[ " ${STARTED[*]} " != *" gateway "* || " ${STARTED[*]} " != *" auth "* ]]; then
        info "note: gateway or auth not started; the canary is not started"
        SKIPPED+=("$svc")
        return 0
    fi
    if daemon_running "$svc"; then
        info "restarting $svc (pid $(daemon_pid "$svc"))"
        stop_daemon "$svc" 20
    fi
    if ! "$TH_DEPLOY/vault-provision.sh" --register-canary "$bin"; then
        warn "could not register the canary; it is not started"
        SKIPPED+=("$svc")
        return 0
    fi
    ensure_port_free "$CANARY_PORT" "canary metrics"
    [[ -s "$TH_STATE/approle/$svc/secret_id" ]] ||
        die "no AppRole secret id for $svc in .run/state/approle; did vault-provision.sh run?"
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    (
        unset BAO_ADDR BAO_TOKEN VAULT_TOKEN
        export VAULT_ADDR="$TH_VAULT_ADDR"
        TALLYHOUSE_VAULT_ROLE_ID="$(cat "$TH_STATE/approle/$svc/role_id")"
        TALLYHOUSE_VAULT_SECRET_ID="$(cat "$TH_STATE/approle/$svc/secret_id")"
        export TALLYHOUSE_VAULT_ROLE_ID TALLYHOUSE_VAULT_SECRET_ID
        export TALLYHOUSE_ENVIRONMENT=local
        export TALLYHOUSE_GATEWAY_URL="$GATEWAY_URL"
        export TALLYHOUSE_CANARY_METRICS_ADDR="$TH_HOST:$CANARY_PORT"
        export TALLYHOUSE_CANARY_AUDIENCE=local
        start_daemon "$svc" "$log" "$bin" "${cmd[@]:1}"
    )
    if wait_for_http "http://$TH_HOST:$CANARY_PORT/health" "$HEALTH_TIMEOUT" "$svc"; then
        CANARY_UP=1
    else
        show_log_tail "$log" 30
        warn "the canary did not answer on $TH_HOST:$CANARY_PORT/health"
    fi
}

# policy_prefix: the prefix of the services' policy, AppRole and database
# role names in secrets.json.
policy_prefix() {
    th_python -c 'import json, sys; print(json.load(open(sys.argv[1]))["policy_prefix"])' "$TH_SECRETS_JSON"
}

# database_of SERVICE: whose database SERVICE logs in to: its own, or the
# "database_of" of secrets.json (query reads ingest's).
database_of() {
    th_python - "$TH_SECRETS_JSON" "$1" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    doc = json.load(f)
print(doc["services"].get(sys.argv[2], {}).get("database_of", sys.argv[2]))
PY
}

# reader_roles_of SERVICE: the roles of the services reading SERVICE's
# database (comma separated), for `ingest migrate --reader-role`.
reader_roles_of() {
    local svc roles=()
    while read -r svc; do
        if [[ "$svc" != "$1" && "$(database_of "$svc")" == "$1" ]]; then
            roles+=("$(service_db_role "$svc")")
        fi
    done < <(services_from_json)
    (IFS=,; printf '%s' "${roles[*]}")
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

# wait_for_auth: auth answers /ready on its metrics port once it has migrated
# its database, loaded its token key from Vault, made its dummy hash and
# joined a broker (logins go to it over RPC).
wait_for_auth() {
    [[ " ${STARTED[*]} " == *" auth "* ]] || return 0
    wait_for_http "http://$TH_HOST:$(metrics_port auth)/ready" "$HEALTH_TIMEOUT" auth ||
        fail_with_logs "auth did not become ready on $TH_HOST:$(metrics_port auth)/ready"
}

# wait_for_query: query answers /ready on its metrics port once it has
# checked its read-only role on the ingest database and joined a broker.
wait_for_query() {
    [[ " ${STARTED[*]} " == *" query "* ]] || return 0
    wait_for_http "http://$TH_HOST:$(metrics_port query)/ready" "$HEALTH_TIMEOUT" query ||
        fail_with_logs "query did not become ready on $TH_HOST:$(metrics_port query)/ready"
}

# write_prometheus_config: .run/prometheus/prometheus.yml, scraping every
# started service's metrics port under job=tallyhouse-<service>-metrics
# (the Consul service name that becomes `job` in production, which the
# dashboards and alert rules select on) and loading grafana/alerts/*.yaml.
write_prometheus_config() {
    local svc file="$PROMETHEUS_DIR/prometheus.yml"
    mkdir -p "$PROMETHEUS_DIR/data"
    {
        echo "# Generated by deployment/up.sh; rewritten on every run."
        echo "global:"
        echo "  scrape_interval: 15s"
        echo "  evaluation_interval: 15s"
        echo "rule_files:"
        echo "  - $TH_ROOT/grafana/alerts/*.yaml"
        echo "scrape_configs:"
        echo "  - job_name: prometheus"
        echo "    static_configs:"
        echo "      - targets: ['$TH_HOST:$PROMETHEUS_PORT']"
        for svc in "${STARTED[@]}"; do
            echo "  - job_name: tallyhouse-$svc-metrics"
            echo "    static_configs:"
            echo "      - targets: ['$TH_HOST:$(metrics_port "$svc")']"
        done
        if ((CANARY_UP == 1)); then
            echo "  - job_name: tallyhouse-canary-metrics"
            echo "    static_configs:"
            echo "      - targets: ['$TH_HOST:$CANARY_PORT']"
        fi
    } >"$file.new"
    mv -f "$file.new" "$file"
}

# start_prometheus: (re)start Prometheus on $TH_HOST:$PROMETHEUS_PORT. A
# failure here is a warning: the platform itself is up.
start_prometheus() {
    local log="$TH_LOGS/prometheus.log" bin
    command -v prometheus >/dev/null 2>&1 || ensure_apt_pkg prometheus
    bin="$(command -v prometheus)" || die "prometheus installed but not on PATH"
    write_prometheus_config
    if ! promtool check config "$PROMETHEUS_DIR/prometheus.yml" >"$PROMETHEUS_DIR/check.log" 2>&1; then
        show_log_tail "$PROMETHEUS_DIR/check.log" 30
        warn "promtool rejects .run/prometheus/prometheus.yml; Prometheus not started"
        return 0
    fi
    if daemon_running prometheus; then
        info "restarting prometheus (pid $(daemon_pid prometheus))"
        stop_daemon prometheus 20
    fi
    if port_open "$TH_HOST" "$PROMETHEUS_PORT"; then
        # E.g. Debian's prometheus.service, started by the package on a systemd host.
        warn "$TH_HOST:$PROMETHEUS_PORT is taken by a process up.sh did not start; Prometheus not started"
        return 0
    fi
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    start_daemon prometheus "$log" "$bin" \
        --config.file="$PROMETHEUS_DIR/prometheus.yml" \
        --storage.tsdb.path="$PROMETHEUS_DIR/data" \
        --storage.tsdb.retention.time=7d \
        --web.listen-address="$TH_HOST:$PROMETHEUS_PORT"
    if wait_for_http "http://$TH_HOST:$PROMETHEUS_PORT/-/ready" "$HEALTH_TIMEOUT" prometheus; then
        PROMETHEUS_UP=1
    else
        show_log_tail "$log" 30
        warn "Prometheus did not become ready on $TH_HOST:$PROMETHEUS_PORT"
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
    if ((CANARY_UP == 1)); then
        status_row canary "metrics $TH_HOST:$CANARY_PORT" "$(daemon_pid_or canary dead)" ".run/logs/canary.log"
    fi
    if ((PROMETHEUS_UP == 1)); then
        status_row prometheus "http://$TH_HOST:$PROMETHEUS_PORT" "$(daemon_pid_or prometheus dead)" ".run/logs/prometheus.log"
    fi
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
        # A process run as another binary's subcommand (the canary) starts
        # once the platform answers (start_canary).
        [[ -n "$(service_command "$svc")" ]] && continue
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
    wait_for_auth
    wait_for_query
    for svc in "${STARTED[@]}"; do
        daemon_running "$svc" || fail_with_logs "$svc exited after start"
    done
    start_canary
    start_prometheus
    print_table
    if [[ " ${STARTED[*]} " == *" auth "* ]]; then
        echo "Back-office users: tallyhouse user add NAME --role admin (asks for the password); see docs/auth.md"
    fi
}

main "$@"
