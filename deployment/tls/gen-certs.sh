#!/usr/bin/env bash
# Self-signed TLS for the Nomad and Consul agents' traffic (RPC, gossip-side
# RPC, HTTP APIs): one certificate authority per product and the agent
# certificates they sign, with openssl. See deployment/tls/README.md.
#
#   deployment/tls/gen-certs.sh [--out DIR] [--nomad-region REGION]
#       [--consul-datacenter DC] [--server-name NAME]... [--days N]
#       [--ca-days N] [--force-ca] [--pulumi-stack STACK]
#
# Writes into DIR (default deployment/tls/generated/, gitignored):
#   nomad-ca.pem nomad-ca-key.pem           Nomad's CA (kept: re-runs reuse it)
#   nomad-server.pem nomad-server-key.pem   server.<region>.nomad
#   nomad-client.pem nomad-client-key.pem   client.<region>.nomad
#   nomad-cli.pem nomad-cli-key.pem         cli.<region>.nomad (operators)
#   consul-ca.pem consul-ca-key.pem         Consul's CA (kept)
#   consul-server.pem consul-server-key.pem server.<dc>.consul
#   consul-cli.pem consul-cli-key.pem       cli.<dc>.consul (operators)
# Every agent certificate also names localhost and 127.0.0.1, plus each
# --server-name on the server certificates (e.g. nomad.dev.tallyhouse.internal,
# the name operators use through the jumphost). Keys are P-256, mode 0600.
# Agent certificates are re-issued on every run (rotation); the CAs only
# with --force-ca (then every agent needs the new files: docs/operations.md).
#
# With --pulumi-stack STACK, stores the files the nodes need as secret
# config of pulumi/infrastructure's stack STACK (pulumi reads each value from
# stdin, never from its command line); `pulumi up` there puts them into SSM.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$HERE/../.." && pwd -P)"
OUT="$HERE/generated"
REGION=global
DC=dc1
DAYS=365
CA_DAYS=3650
FORCE_CA=0
STACK=""
SERVER_NAMES=()

die() { printf 'gen-certs: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

while (($# > 0)); do
    case "$1" in
        --out) OUT="${2:?}"; shift 2 ;;
        --nomad-region) REGION="${2:?}"; shift 2 ;;
        --consul-datacenter) DC="${2:?}"; shift 2 ;;
        --server-name) SERVER_NAMES+=("${2:?}"); shift 2 ;;
        --days) DAYS="${2:?}"; shift 2 ;;
        --ca-days) CA_DAYS="${2:?}"; shift 2 ;;
        --force-ca) FORCE_CA=1; shift ;;
        --pulumi-stack) STACK="${2:?}"; shift 2 ;;
        -h | --help) usage 0 ;;
        *) die "unknown argument $1 (--help)" ;;
    esac
done
[[ "$REGION" =~ ^[a-z0-9-]+$ ]] || die "bad Nomad region $REGION"
[[ "$DC" =~ ^[a-z0-9-]+$ ]] || die "bad Consul datacenter $DC"
[[ "$DAYS" =~ ^[0-9]+$ && "$CA_DAYS" =~ ^[0-9]+$ ]] || die "--days and --ca-days take a number"
command -v openssl >/dev/null || die "openssl is needed"

umask 077
mkdir -p "$OUT"
chmod 0700 "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# new_key FILE: a P-256 private key (PKCS#8), mode 0600.
new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 0600 "$1"
}

# ca NAME CN: a self-signed CA, unless one exists (or --force-ca).
ca() {
    local name="$1" cn="$2"
    if [[ -s "$OUT/$name-ca.pem" && -s "$OUT/$name-ca-key.pem" && "$FORCE_CA" == 0 ]]; then
        printf 'gen-certs: keeping %s\n' "$OUT/$name-ca.pem" >&2
        return 0
    fi
    new_key "$OUT/$name-ca-key.pem"
    openssl req -x509 -new -key "$OUT/$name-ca-key.pem" -sha256 -days "$CA_DAYS" \
        -subj "/O=Tallyhouse/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$OUT/$name-ca.pem"
    chmod 0644 "$OUT/$name-ca.pem"
    printf 'gen-certs: new CA %s\n' "$OUT/$name-ca.pem" >&2
}

# leaf CA FILE CN SAN...: an agent certificate signed by CA, for servers and
# clients alike (the agents are both, to each other).
leaf() {
    local ca="$1" file="$2" cn="$3" san="" name
    shift 3
    for name in "$@"; do
        if [[ "$name" =~ ^[0-9.]+$ ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
    done
    new_key "$OUT/$file-key.pem"
    openssl req -new -key "$OUT/$file-key.pem" -subj "/O=Tallyhouse/CN=$cn" -out "$WORK/$file.csr"
    cat >"$WORK/$file.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=${san%,}
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
    openssl x509 -req -in "$WORK/$file.csr" -CA "$OUT/$ca-ca.pem" -CAkey "$OUT/$ca-ca-key.pem" \
        -CAcreateserial -CAserial "$WORK/$ca.srl" -sha256 -days "$DAYS" \
        -extfile "$WORK/$file.ext" -out "$OUT/$file.pem" 2>/dev/null
    chmod 0644 "$OUT/$file.pem"
    openssl verify -CAfile "$OUT/$ca-ca.pem" "$OUT/$file.pem" >/dev/null || die "$file.pem does not verify"
}

ca nomad "Tallyhouse Nomad agent CA"
ca consul "Tallyhouse Consul agent CA"
leaf nomad nomad-server "server.$REGION.nomad" "server.$REGION.nomad" localhost 127.0.0.1 "${SERVER_NAMES[@]}"
leaf nomad nomad-client "client.$REGION.nomad" "client.$REGION.nomad" localhost 127.0.0.1
leaf nomad nomad-cli "cli.$REGION.nomad" "cli.$REGION.nomad" localhost
leaf consul consul-server "server.$DC.consul" "server.$DC.consul" localhost 127.0.0.1 "${SERVER_NAMES[@]}"
leaf consul consul-cli "cli.$DC.consul" "cli.$DC.consul" localhost
printf 'gen-certs: certificates in %s (valid %s days)\n' "$OUT" "$DAYS" >&2

if [[ -n "$STACK" ]]; then
    command -v pulumi >/dev/null || die "--pulumi-stack needs the pulumi CLI"
    declare -A CONFIG=(
        [tlsNomadCa]=nomad-ca.pem
        [tlsNomadServerCert]=nomad-server.pem
        [tlsNomadServerKey]=nomad-server-key.pem
        [tlsNomadClientCert]=nomad-client.pem
        [tlsNomadClientKey]=nomad-client-key.pem
        [tlsConsulCa]=consul-ca.pem
        [tlsConsulServerCert]=consul-server.pem
        [tlsConsulServerKey]=consul-server-key.pem
    )
    for key in "${!CONFIG[@]}"; do
        (cd "$ROOT/pulumi/infrastructure" && pulumi config set --secret --stack "$STACK" "$key" <"$OUT/${CONFIG[$key]}") ||
            die "pulumi config set $key failed"
    done
    printf 'gen-certs: stored as secret config of pulumi/infrastructure stack %s; run pulumi up there\n' "$STACK" >&2
fi
