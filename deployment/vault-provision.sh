#!/usr/bin/env bash
# Provision the local OpenBao from deployment/vault/secrets.json:
#   - KV v2 at secret/ (dev mode already has it);
#   - one policy per service, reading only secret/data/tallyhouse/<svc>/*,
#     plus create/read/update on exactly the secrets it rotates itself
#     ("writes": ingest its receipt_key, auth its jwt_key);
#   - the secrets each service reads, with fresh credentials:
#       amqp     -> RabbitMQ user 'tallyhouse' (new random password each run)
#       database -> PostgreSQL role tallyhouse_<svc> (new random password each run)
#                   and its database tallyhouse_<svc>, created if missing;
#                   a service with "database_of": S (query: ingest) gets a
#                   login for S's database instead, and no database of its own;
#       s3       -> the s3s-fs key pair from .run/state/s3-credentials;
#       receipt_key, jwt_key -> P-256 signing keys, generated once and kept
#                   (never overwritten: the rotate-keys job rotates them);
#       canary   -> the end-to-end canary's submitter (fixed id, P-256 key)
#                   and back-office user (fixed name, random password),
#                   generated once and kept;
#   - AppRole: one role per service (token_policies: its policy only); its
#     role id and a fresh secret id in .run/state/approle/<svc>/ (0600),
#     handed to the process by up.sh through its environment;
#   - the database secrets engine: connection "tallyhouse" as the admin role
#     tallyhouse_vault (CREATEROLE), and one role per service reading
#     `database`, whose leased logins are members of tallyhouse_<svc>;
#   - one token per service with only its policy, in .run/state/tokens/<svc>
#     (the CLI uses its token; services log in with AppRole).
# Idempotent; re-run whenever OpenBao (in-memory dev mode) restarts.
#
#   deployment/vault-provision.sh --register-canary TALLYHOUSE_BIN
# registers the canary's submitter, its public key and its back-office user
# (role analyst, password from Vault) on the running platform with the CLI
# (over RPC, as the operator), idempotently; up.sh runs it once the services
# answer.
# Secrets travel through stdin, files and the environment, never argv or stdout.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AMQP_USER=tallyhouse

# Filled by load_config.
KV_MOUNT=""
PREFIX=""
POLICY_PREFIX=""
TOKEN_TTL=""
TOKEN_RENEWABLE=""
APPROLE_MOUNT=""
APPROLE_TOKEN_TTL=""
APPROLE_TOKEN_MAX_TTL=""
DB_MOUNT=""
DB_CONNECTION=""
DB_ADMIN=""
DB_DEFAULT_TTL=""
DB_MAX_TTL=""
SERVICES=()
declare -A READS=()
declare -A WRITES=()
declare -A DB_OF=()

load_config() {
    local key a b rest config
    [[ -r "$TH_SECRETS_JSON" ]] || die "missing $TH_SECRETS_JSON"
    # Read whole first, so that an invalid file stops everything.
    config="$(th_python - "$TH_SECRETS_JSON" <<'PY'
import json, re, sys
name = re.compile(r"^[a-z][a-z0-9_-]*$")
with open(sys.argv[1]) as f:
    doc = json.load(f)
if doc.get("kv_version", 2) != 2:
    sys.exit("secrets.json: only kv_version 2 is supported")
for key in ("kv_mount", "prefix", "policy_prefix"):
    if not name.match(doc[key]):
        sys.exit(f"secrets.json: bad {key}: {doc[key]!r}")
print("mount", doc["kv_mount"])
print("prefix", doc["prefix"])
print("policy_prefix", doc["policy_prefix"])
token = doc.get("token", {})
print("ttl", token.get("ttl", "24h"))
print("renewable", "true" if token.get("renewable", True) else "false")
approle = doc["approle"]
print("approle", approle["mount"], approle["token_ttl"], approle["token_max_ttl"])
engine = doc["database_engine"]
for key in ("mount", "connection", "admin_role"):
    if not name.match(engine[key]):
        sys.exit(f"secrets.json: bad database_engine.{key}: {engine[key]!r}")
print("dbengine", engine["mount"], engine["connection"], engine["admin_role"], engine["default_ttl"], engine["max_ttl"])
kinds = doc["kinds"]
for svc, spec in doc["services"].items():
    if not name.match(svc):
        sys.exit(f"secrets.json: bad service name {svc!r}")
    for kind in spec["reads"]:
        if kind not in kinds:
            sys.exit(f"secrets.json: service {svc} reads unknown kind {kind!r}")
    print("svc", svc, " ".join(spec["reads"]))
    for kind in spec.get("writes", []):
        if kind not in spec["reads"]:
            sys.exit(f"secrets.json: service {svc} writes {kind!r}, which it does not read")
    if spec.get("writes"):
        print("writes", svc, " ".join(spec["writes"]))
    if "database_of" in spec:
        owner = doc["services"].get(spec["database_of"], {})
        if "database" not in spec["reads"] or "database" not in owner.get("reads", []):
            sys.exit(f"secrets.json: {svc}: database_of must name a service reading database, and {svc} must read it too")
        print("dbof", svc, spec["database_of"])
PY
    )" || die "invalid deployment/vault/secrets.json"
    while read -r key a b rest; do
        case "$key" in
            mount) KV_MOUNT="$a" ;;
            prefix) PREFIX="$a" ;;
            policy_prefix) POLICY_PREFIX="$a" ;;
            ttl) TOKEN_TTL="$a" ;;
            renewable) TOKEN_RENEWABLE="$a" ;;
            approle)
                APPROLE_MOUNT="$a"
                APPROLE_TOKEN_TTL="$b"
                APPROLE_TOKEN_MAX_TTL="$rest"
                ;;
            dbengine)
                DB_MOUNT="$a"
                DB_CONNECTION="$b"
                read -r DB_ADMIN DB_DEFAULT_TTL DB_MAX_TTL <<<"$rest"
                ;;
            svc)
                SERVICES+=("$a")
                READS["$a"]="$b${rest:+ $rest}"
                ;;
            dbof) DB_OF["$a"]="$b" ;;
            writes) WRITES["$a"]="$b${rest:+ $rest}" ;;
            *) die "unexpected config line '$key'" ;;
        esac
    done <<<"$config"
    ((${#SERVICES[@]} > 0)) || die "no services in $TH_SECRETS_JSON"
}

reads() { [[ " ${READS[$1]} " == *" $2 "* ]]; }

any_reads() {
    local svc
    for svc in "${SERVICES[@]}"; do
        reads "$svc" "$1" && return 0
    done
    return 1
}

# root_api METHOD PATH [CURL_ARGS...]: vault_api with the root token.
root_api() { vault_api "$TH_VAULT_ROOT_TOKEN_FILE" "$@"; }

ensure_kv_v2() {
    local state
    state="$(root_api GET sys/mounts | th_python -c '
import json, sys
doc = json.load(sys.stdin)
mount = sys.argv[1] + "/"
m = doc.get("data", doc).get(mount)
if m is None:
    print("missing")
elif m["type"] != "kv":
    print("other")
elif (m.get("options") or {}).get("version") == "2":
    print("ok")
else:
    print("v1")
' "$KV_MOUNT")" || die "cannot list OpenBao secrets engines"
    case "$state" in
        ok) ;;
        missing)
            echo '{"type": "kv", "options": {"version": "2"}}' |
                root_api POST "sys/mounts/$KV_MOUNT" --data-binary @- >/dev/null ||
                die "cannot mount KV v2 at $KV_MOUNT/"
            ;;
        v1)
            echo '{"options": {"version": "2"}}' |
                root_api POST "sys/mounts/$KV_MOUNT/tune" --data-binary @- >/dev/null ||
                die "cannot upgrade $KV_MOUNT/ to KV v2"
            ;;
        *) die "$KV_MOUNT/ is mounted in OpenBao but is not a KV engine" ;;
    esac
}

# policy_hcl SERVICE: the policy of one service.
policy_hcl() {
    local kind
    cat <<HCL
# Generated by deployment/vault-provision.sh from deployment/vault/secrets.json.
# $1 reads its own secrets and nothing else.
path "$KV_MOUNT/data/$PREFIX/$1/*" {
  capabilities = ["read"]
}
HCL
    for kind in ${WRITES[$1]:-}; do
        cat <<HCL
# It rotates this one itself (check-and-set writes; docs/lifecycle.md).
path "$KV_MOUNT/data/$PREFIX/$1/$kind" {
  capabilities = ["create", "read", "update"]
}
HCL
    done
    if reads "$1" database; then
        cat <<HCL
# Its own leased database logins (renewal goes through sys/leases/renew,
# which the default policy allows for the token's own leases).
path "$DB_MOUNT/creds/$POLICY_PREFIX$1" {
  capabilities = ["read"]
}
HCL
    fi
}

write_policies() {
    local svc
    for svc in "${SERVICES[@]}"; do
        policy_hcl "$svc" |
            th_python -c 'import json, sys; print(json.dumps({"policy": sys.stdin.read()}))' |
            root_api PUT "sys/policies/acl/$POLICY_PREFIX$svc" --data-binary @- >/dev/null ||
            die "cannot write policy $POLICY_PREFIX$svc"
    done
}

# kv_put SERVICE KIND FIELD1 VALUE1 [FIELD2 VALUE2 ...]: store one secret.
# The values reach python and curl through pipes (printf is a builtin), so
# they never appear on a command line.
kv_put() {
    local svc="$1" kind="$2"
    shift 2
    printf '%s\n' "$@" | th_python -c '
import json, sys
lines = sys.stdin.read().split("\n")[:-1]
print(json.dumps({"data": dict(zip(lines[0::2], lines[1::2]))}))
' | root_api POST "$KV_MOUNT/data/$PREFIX/$svc/$kind" --data-binary @- >/dev/null ||
        die "cannot write secret $PREFIX/$svc/$kind"
}

provision_amqp() {
    local pw svc
    any_reads amqp || return 0
    command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl not found; run deployment/stack-up.sh"
    pw="$(random_hex 24)"
    # rabbitmqctl reads the password from stdin when it is not an argument.
    # change_password fails when the user does not exist yet: then add it.
    if ! printf '%s\n' "$pw" | as_root rabbitmqctl -q change_password "$AMQP_USER" >/dev/null 2>&1; then
        printf '%s\n' "$pw" | as_root rabbitmqctl -q add_user "$AMQP_USER" >/dev/null ||
            die "rabbitmqctl add_user $AMQP_USER failed"
    fi
    as_root rabbitmqctl -q set_permissions -p / "$AMQP_USER" '.*' '.*' '.*' </dev/null >/dev/null ||
        die "rabbitmqctl set_permissions for $AMQP_USER failed"
    for svc in "${SERVICES[@]}"; do
        if reads "$svc" amqp; then
            kv_put "$svc" amqp username "$AMQP_USER" password "$pw"
        fi
    done
}

provision_database() {
    local svc role pw
    any_reads database || return 0
    for svc in "${SERVICES[@]}"; do
        reads "$svc" database || continue
        role="$(service_db_role "$svc")"
        pw="$(random_hex 24)"
        # The SQL (with the password) goes through stdin; log_statement is
        # switched off for this session so the server log never sees it.
        # shellcheck disable=SC2119 # psql_admin takes no arguments here
        psql_admin >/dev/null <<SQL || die "could not create/update PostgreSQL role $role"
SET log_statement = 'none';
\\set role '$role'
\\set pw '$pw'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'pw') \\gexec
SQL
        if [[ -n "${DB_OF[$svc]:-}" ]]; then
            # A login for another service's database (query reads ingest's);
            # its grants come from that service's migrations (`ingest migrate
            # --reader-role`). The secret names the database.
            kv_put "$svc" database username "$role" password "$pw" \
                database "$(service_db_name "${DB_OF[$svc]}")"
            continue
        fi
        ensure_service_database "$role" "$(service_db_name "$svc")"
        kv_put "$svc" database username "$role" password "$pw"
    done
}

# ensure_service_database ROLE DB: database DB, owned by ROLE, that only its
# owner (and superusers) may connect to, created when missing. An existing
# database is left exactly as it is (owner, grants, data, migrations). The
# service creates its tables itself (migrations at start-up).
ensure_service_database() {
    local role="$1" db="$2"
    # CREATE DATABASE cannot run in a transaction: \gexec runs each
    # generated statement on its own.
    # shellcheck disable=SC2119 # psql_admin takes no arguments here
    psql_admin >/dev/null <<SQL || die "could not create PostgreSQL database $db"
\\set role '$role'
\\set db '$db'
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS missing \\gset
\\if :missing
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') \\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \\gexec
\\endif
SQL
}

provision_s3() {
    local svc ak sk
    any_reads s3 || return 0
    [[ -s "$TH_S3_CREDENTIALS_FILE" ]] || die "no .run/state/s3-credentials; run deployment/stack-up.sh"
    ak="$(read_kv_file "$TH_S3_CREDENTIALS_FILE" access_key_id)"
    sk="$(read_kv_file "$TH_S3_CREDENTIALS_FILE" secret_access_key)"
    for svc in "${SERVICES[@]}"; do
        if reads "$svc" s3; then
            kv_put "$svc" s3 access_key_id "$ak" secret_access_key "$sk"
        fi
    done
}

# provision_receipt_key: the receipt signing key is generated once (openssl,
# P-256, PKCS#8) and kept: receipts signed with it must stay verifiable. The
# PEM goes from openssl to python to curl through pipes only.
provision_receipt_key() {
    local svc
    any_reads receipt_key || return 0
    for svc in "${SERVICES[@]}"; do
        reads "$svc" receipt_key || continue
        if root_api GET "$KV_MOUNT/data/$PREFIX/$svc/receipt_key" >/dev/null 2>&1; then
            continue
        fi
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null |
            th_python -c 'import json, sys; print(json.dumps({"data": {"private_key_pem": sys.stdin.read()}}))' |
            root_api POST "$KV_MOUNT/data/$PREFIX/$svc/receipt_key" --data-binary @- >/dev/null ||
            die "cannot write secret $PREFIX/$svc/receipt_key"
        info "generated the receipt signing key of $svc"
    done
}

# provision_jwt_key: the access token signing key of auth, generated once
# like the receipt key (openssl, P-256, PKCS#8) and kept, so that tokens
# issued before a re-provisioning stay valid. Pipes only, never argv.
provision_jwt_key() {
    local svc
    any_reads jwt_key || return 0
    for svc in "${SERVICES[@]}"; do
        reads "$svc" jwt_key || continue
        if root_api GET "$KV_MOUNT/data/$PREFIX/$svc/jwt_key" >/dev/null 2>&1; then
            continue
        fi
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null |
            th_python -c 'import json, sys; print(json.dumps({"data": {"private_key_pem": sys.stdin.read()}}))' |
            root_api POST "$KV_MOUNT/data/$PREFIX/$svc/jwt_key" --data-binary @- >/dev/null ||
            die "cannot write secret $PREFIX/$svc/jwt_key"
        info "generated the token signing key of $svc"
    done
}

# provision_canary: the canary's secret, generated once and kept (the
# platform registers its key and user from it: a new key or password after
# every run would only pile up registrations). The PEM and the password go
# through pipes only, never argv.
provision_canary() {
    local svc pw
    any_reads canary || return 0
    for svc in "${SERVICES[@]}"; do
        reads "$svc" canary || continue
        if root_api GET "$KV_MOUNT/data/$PREFIX/$svc/canary" >/dev/null 2>&1; then
            continue
        fi
        pw="$(random_hex 24)"
        { printf '%s\n' "$pw"; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null; } |
            th_python -c '
import json, sys
spec = json.load(open(sys.argv[1]))["kinds"]["canary"]
password = sys.stdin.readline().rstrip("\n")
pem = sys.stdin.read()
if "PRIVATE KEY" not in pem or not password:
    sys.exit("no key or no password generated")
print(json.dumps({"data": {"submitter_id": spec["submitter_id"], "username": spec["username"],
                           "private_key_pem": pem, "password": password}}))
' "$TH_SECRETS_JSON" |
            root_api POST "$KV_MOUNT/data/$PREFIX/$svc/canary" --data-binary @- >/dev/null ||
            die "cannot write secret $PREFIX/$svc/canary"
        info "generated the canary's key and password ($svc)"
    done
}

# register_canary BIN: the canary's submitter, public key and back-office
# user on the running platform, through the CLI at BIN (RPC as the operator,
# with the CLI's token of .run/state/tokens/cli). Each step is idempotent:
# `submitter add` and `key add` repeat as no-ops; an existing user gets the
# password of the secret, the role analyst, is enabled and its failed logins
# are cleared. The password reaches the CLI on stdin only.
register_canary() {
    local bin="$1" svc sid user pw pub fields
    [[ -x "$bin" ]] || die "register-canary: $bin is not an executable"
    any_reads canary || return 0
    cli() {
        (
            cd "$TH_ROOT"
            unset BAO_ADDR BAO_TOKEN VAULT_TOKEN
            VAULT_ADDR="$TH_VAULT_ADDR" TALLYHOUSE_AMQP_URIS="$TH_AMQP_URIS" "$bin" "$@"
        )
    }
    for svc in "${SERVICES[@]}"; do
        reads "$svc" canary || continue
        fields="$(root_api GET "$KV_MOUNT/data/$PREFIX/$svc/canary" |
            th_python -c 'import json, sys; d = json.load(sys.stdin)["data"]["data"]; print(d["submitter_id"], d["username"])')" ||
            die "no canary secret at $PREFIX/$svc/canary; run deployment/vault-provision.sh first"
        read -r sid user <<<"$fields"
        pub="$(mktemp)"
        root_api GET "$KV_MOUNT/data/$PREFIX/$svc/canary" |
            th_python -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["data"]["data"]["private_key_pem"])' |
            openssl pkey -pubout -out "$pub" 2>/dev/null || {
            rm -f "$pub"
            die "cannot derive the canary's public key"
        }
        cli submitter add "$sid" --name "Tallyhouse canary" >/dev/null ||
            { rm -f "$pub"; die "cannot register the canary submitter $sid"; }
        cli key add "$sid" "$pub" >/dev/null ||
            { rm -f "$pub"; die "cannot register the canary's key for $sid"; }
        rm -f "$pub"
        pw="$(root_api GET "$KV_MOUNT/data/$PREFIX/$svc/canary" |
            th_python -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["data"]["data"]["password"])')" ||
            die "cannot read the canary's password"
        if cli --json user list | th_python -c '
import json, sys
sys.exit(0 if any(u["username"] == sys.argv[1] for u in json.load(sys.stdin)["users"]) else 1)
' "$user"; then
            printf '%s\n' "$pw" | cli user set-password "$user" --password-stdin >/dev/null ||
                die "cannot set the password of the canary user $user"
            cli user set-roles "$user" --role analyst >/dev/null &&
                cli user enable "$user" >/dev/null &&
                cli lockout clear account "$user" >/dev/null ||
                die "cannot set up the canary user $user"
        else
            printf '%s\n' "$pw" | cli user add "$user" --role analyst --password-stdin >/dev/null ||
                die "cannot add the canary user $user"
        fi
        info "canary registered: submitter $sid with its key, back-office user $user (analyst)"
    done
}

# ensure_engine PATH TYPE: mount a secrets engine (or, with "auth", an auth
# method) at PATH when nothing is mounted there yet.
ensure_mounted() {
    local kind="$1" path="$2" type="$3" list
    if [[ "$kind" == auth ]]; then list=sys/auth; else list=sys/mounts; fi
    if root_api GET "$list" | th_python -c '
import json, sys
doc = json.load(sys.stdin)
sys.exit(0 if (sys.argv[1] + "/") in doc.get("data", doc) else 1)
' "$path"; then
        return 0
    fi
    printf '{"type": "%s"}' "$type" |
        root_api POST "$list/$path" --data-binary @- >/dev/null ||
        die "cannot enable $type at $path/"
}

# provision_approle: one AppRole role per service with only its policy; the
# role id and a fresh secret id go to .run/state/approle/<svc>/ (0600).
provision_approle() {
    local svc role
    ensure_mounted auth "$APPROLE_MOUNT" approle
    for svc in "${SERVICES[@]}"; do
        role="$POLICY_PREFIX$svc"
        th_python -c '
import json, sys
policy, ttl, max_ttl = sys.argv[1:]
print(json.dumps({"token_policies": [policy], "token_ttl": ttl, "token_max_ttl": max_ttl,
                  "secret_id_ttl": "0", "secret_id_num_uses": 0}))
' "$POLICY_PREFIX$svc" "$APPROLE_TOKEN_TTL" "$APPROLE_TOKEN_MAX_TTL" |
            root_api POST "auth/$APPROLE_MOUNT/role/$role" --data-binary @- >/dev/null ||
            die "cannot write AppRole role $role"
        root_api GET "auth/$APPROLE_MOUNT/role/$role/role-id" |
            th_python -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["data"]["role_id"])' |
            write_secret_file "$TH_STATE/approle/$svc/role_id" ||
            die "cannot read the role id of $role"
        root_api POST "auth/$APPROLE_MOUNT/role/$role/secret-id" |
            th_python -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["data"]["secret_id"])' |
            write_secret_file "$TH_STATE/approle/$svc/secret_id" ||
            die "cannot create a secret id for $role"
    done
}

# provision_database_engine: the database secrets engine, connected to the
# local PostgreSQL as DB_ADMIN (CREATEROLE, fresh password each run), and one
# role per service reading `database`: each leased login is a new role,
# member of the service's stable role (its own, or its reader role for a
# "database_of" service), valid until the lease ends.
provision_database_engine() {
    local svc pw group allowed=()
    any_reads database || return 0
    ensure_mounted secrets "$DB_MOUNT" database
    pw="$(random_hex 24)"
    # shellcheck disable=SC2119 # psql_admin takes no arguments here
    psql_admin >/dev/null <<SQL || die "could not create/update PostgreSQL role $DB_ADMIN"
SET log_statement = 'none';
\\set role '$DB_ADMIN'
\\set pw '$pw'
SELECT format('CREATE ROLE %I LOGIN CREATEROLE', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEROLE PASSWORD %L', :'role', :'pw') \\gexec
SQL
    for svc in "${SERVICES[@]}"; do
        reads "$svc" database && allowed+=("$POLICY_PREFIX$svc")
    done
    printf '%s\n' "$pw" | th_python -c '
import json, sys
admin, host, port, allowed = sys.argv[1:]
print(json.dumps({
    "plugin_name": "postgresql-database-plugin",
    "connection_url": "postgresql://{{username}}:{{password}}@%s:%s/postgres?sslmode=disable" % (host, port),
    "username": admin,
    "password": sys.stdin.readline().rstrip("\n"),
    "allowed_roles": allowed.split(","),
    "verify_connection": True,
}))
' "$DB_ADMIN" "$TH_HOST" "$TH_PG_PORT" "$(IFS=,; printf '%s' "${allowed[*]}")" |
        root_api POST "$DB_MOUNT/config/$DB_CONNECTION" --data-binary @- >/dev/null ||
        die "cannot configure the database secrets engine connection $DB_CONNECTION"
    for svc in "${SERVICES[@]}"; do
        reads "$svc" database || continue
        group="$(service_db_role "$svc")"
        th_python -c '
import json, sys
connection, group, ttl, max_ttl = sys.argv[1:]
print(json.dumps({
    "db_name": connection,
    "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '"'"'{{password}}'"'"' VALID UNTIL '"'"'{{expiration}}'"'"' IN ROLE \"%s\";" % group,
    ],
    "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
    "default_ttl": ttl,
    "max_ttl": max_ttl,
}))
' "$DB_CONNECTION" "$group" "$DB_DEFAULT_TTL" "$DB_MAX_TTL" |
            root_api POST "$DB_MOUNT/roles/$POLICY_PREFIX$svc" --data-binary @- >/dev/null ||
            die "cannot write the database role $POLICY_PREFIX$svc"
    done
}

create_tokens() {
    local svc kind path caps
    for svc in "${SERVICES[@]}"; do
        # The response carries the token: it goes straight into the 0600 file.
        th_python -c '
import json, sys
svc, policy, ttl, renewable = sys.argv[1:]
print(json.dumps({"policies": [policy], "ttl": ttl, "renewable": renewable == "true",
                  "display_name": svc, "meta": {"service": svc}}))
' "$svc" "$POLICY_PREFIX$svc" "$TOKEN_TTL" "$TOKEN_RENEWABLE" |
            root_api POST auth/token/create --data-binary @- |
            th_python -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["auth"]["client_token"])' |
            write_secret_file "$TH_TOKENS/$svc" ||
            die "could not create a token for $svc"
        [[ -s "$TH_TOKENS/$svc" ]] || die "empty token for $svc"
        # Self-check: the new token can read the service's first secret.
        kind="${READS[$svc]%% *}"
        path="$KV_MOUNT/data/$PREFIX/$svc/$kind"
        caps="$(printf '{"paths": ["%s"]}' "$path" |
            vault_api "$TH_TOKENS/$svc" POST sys/capabilities-self --data-binary @- |
            th_python -c 'import json, sys; print(" ".join(json.load(sys.stdin)[sys.argv[1]]))' "$path")" ||
            die "capability check failed for $svc"
        [[ " $caps " == *" read "* ]] || die "the token for $svc cannot read $path (capabilities: $caps)"
    done
}

main() {
    ensure_run_dirs
    [[ -s "$TH_VAULT_ROOT_TOKEN_FILE" ]] || die "no .run/state/vault-root-token; run deployment/stack-up.sh first"
    bao_token_valid "$TH_VAULT_ROOT_TOKEN_FILE" ||
        die "OpenBao at $TH_VAULT_ADDR is not running or refuses the root token; run deployment/stack-up.sh first"
    load_config
    if [[ "${1:-}" == --register-canary ]]; then
        [[ -n "${2:-}" ]] || die "usage: vault-provision.sh --register-canary TALLYHOUSE_BIN"
        register_canary "$2"
        return 0
    fi
    ensure_kv_v2
    write_policies
    provision_amqp
    provision_database
    provision_s3
    provision_receipt_key
    provision_jwt_key
    provision_canary
    provision_database_engine
    provision_approle
    create_tokens
    if daemon_running openbao; then
        cp "$(pid_file openbao)" "$TH_STATE/provisioned-instance"
    fi
    info "OpenBao provisioned: ${#SERVICES[@]} services (${SERVICES[*]}); tokens in .run/state/tokens/"
}

main "$@"
