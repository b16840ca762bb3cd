#!/usr/bin/env bash
# Stop what deployment/up.sh started.
#   deployment/down.sh         stop the Tallyhouse services (SIGTERM, SIGKILL after 20 s)
#   deployment/down.sh --all   also stop OpenBao and s3s-fs, and PostgreSQL and
#                              RabbitMQ if (and only if) stack-up.sh started them
# A system PostgreSQL or RabbitMQ that was already running is left alone.
# OpenBao runs in memory: after --all, its secrets and tokens are gone
# (stack-up.sh + vault-provision.sh, or up.sh, recreate them).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

ALL=0
for arg in "$@"; do
    case "$arg" in
        --all) ALL=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $arg"
            ;;
    esac
done

STOPPED=()
LEFT=()

stop_named() {
    local name="$1" grace="$2"
    if daemon_running "$name"; then
        stop_daemon "$name" "$grace"
        STOPPED+=("$name")
    else
        rm -f "$(pid_file "$name")"
    fi
}

main() {
    local svc file name pgv
    declare -A seen=()
    [[ -d "$TH_PIDS" ]] || mkdir -p "$TH_PIDS"
    # Services: those of secrets.json, plus any other pid file up.sh left behind.
    if [[ -r "$TH_SECRETS_JSON" ]]; then
        while IFS= read -r svc; do
            seen["$svc"]=1
            stop_named "$svc" 20
        done < <(services_from_json)
    fi
    for file in "$TH_PIDS"/*.pid; do
        [[ -e "$file" ]] || continue
        name="$(basename "$file" .pid)"
        [[ "$name" == openbao || "$name" == s3s-fs || -n "${seen[$name]:-}" ]] && continue
        stop_named "$name" 20
    done

    if ((ALL)); then
        stop_named openbao 15
        rm -f "$TH_STATE/provisioned-instance"
        stop_named s3s-fs 15
        if [[ -f "$TH_STATE/started-postgresql" ]] && pgv="$(pg_version)"; then
            as_root pg_ctlcluster --skip-systemctl-redirect "$pgv" main stop >/dev/null 2>&1 ||
                warn "could not stop PostgreSQL $pgv/main"
            rm -f "$TH_STATE/started-postgresql"
            STOPPED+=("postgresql")
        else
            LEFT+=("PostgreSQL $TH_HOST:$TH_PG_PORT (system service, not started by stack-up.sh)")
        fi
        if [[ -f "$TH_STATE/started-rabbitmq" ]]; then
            as_root rabbitmqctl stop </dev/null >/dev/null 2>&1 || warn "could not stop RabbitMQ"
            rm -f "$TH_STATE/started-rabbitmq"
            STOPPED+=("rabbitmq")
        else
            LEFT+=("RabbitMQ $TH_HOST:$TH_AMQP_PORT (system service, not started by stack-up.sh)")
        fi
    else
        if daemon_running openbao; then LEFT+=("OpenBao $TH_VAULT_ADDR"); fi
        if daemon_running s3s-fs; then LEFT+=("s3s-fs $TH_S3_ENDPOINT"); fi
        if port_open "$TH_HOST" "$TH_PG_PORT"; then LEFT+=("PostgreSQL $TH_HOST:$TH_PG_PORT"); fi
        if port_open "$TH_HOST" "$TH_AMQP_PORT"; then LEFT+=("RabbitMQ $TH_HOST:$TH_AMQP_PORT"); fi
    fi

    if ((${#STOPPED[@]} > 0)); then
        echo "Stopped: ${STOPPED[*]}"
    else
        echo "Nothing of ours was running."
    fi
    if ((${#LEFT[@]} > 0)); then
        echo "Left running:"
        printf '  %s\n' "${LEFT[@]}"
        ((ALL)) || echo "(deployment/down.sh --all also stops OpenBao and s3s-fs)"
    fi
}

main
