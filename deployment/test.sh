#!/usr/bin/env bash
# THE TEST COMMAND: the tests run against the real local servers.
#   1. deployment/stack-up.sh and deployment/vault-provision.sh
#   2. export the TALLYHOUSE_TEST_* variables (below) for the tests
#   3. cargo build --workspace --all-targets
#   4. cargo nextest run --workspace --no-fail-fast
#      (cargo test --workspace --no-fail-fast when nextest is not installed)
#   5. Python tests (pytest) under pulumi/ and tests/python/, when there are any
#   6. fuzzing: every cargo-fuzz target of fuzz/ for TALLYHOUSE_FUZZ_SECONDS
#      (default 60) each, by fuzz/run.sh (skipped, saying so, without nightly)
#   7. fault injection under load: `chaos --short` (the debug build of step 3):
#      ingest killed, broker connections cut, S3 killed, OpenBao sealed, each
#      mid-load, then healed; fails if a package is lost, duplicated or
#      unexpected, or a row lacks its blob (about 2-3 minutes; TALLYHOUSE_CHAOS=0
#      skips it; docs/reliability.md)
# With arguments, only steps 1-4 run and the arguments go to nextest (or to
# cargo test), e.g. `deployment/test.sh -E 'test(/^cli::/)'`.
# Every part runs even if an earlier one failed; the exit status is non-zero
# if any part failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PY_TEST_DIRS=(pulumi tests/python)
FAILED=()

run_rust() {
    cd "$TH_ROOT"
    if ! cargo build --workspace --all-targets </dev/null; then
        FAILED+=("cargo build --workspace --all-targets")
        warn "build failed: skipping the Rust tests"
        return 0
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast "$@" </dev/null || FAILED+=("cargo nextest run")
    else
        cargo test --workspace --no-fail-fast "$@" </dev/null || FAILED+=("cargo test")
    fi
}

# has_pytest_files DIR: true if DIR holds test_*.py or *_test.py files.
has_pytest_files() {
    [[ -d "$TH_ROOT/$1" ]] || return 1
    [[ -n "$(find "$TH_ROOT/$1" \( -name .venv -o -name venv -o -name node_modules -o -name __pycache__ \) -prune \
        -o -type f \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)" ]]
}

run_python() {
    local dir dirs=() req log="$TH_LOGS/pip-tests.log"
    for dir in "${PY_TEST_DIRS[@]}"; do
        if has_pytest_files "$dir"; then dirs+=("$dir"); fi
    done
    if ((${#dirs[@]} == 0)); then
        info "no Python tests in ${PY_TEST_DIRS[*]}: skipping pytest"
        return 0
    fi
    [[ -x "$TH_VENV/bin/python" ]] || die ".venv is missing (stack-up.sh creates it)"
    for req in "$TH_ROOT/tests/python/requirements.txt" "$TH_ROOT/pulumi/requirements.txt"; do
        [[ -f "$req" ]] || continue
        if ! "$TH_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >>"$log" 2>&1 </dev/null; then
            show_log_tail "$log" 20
            FAILED+=("pip install -r ${req#"$TH_ROOT"/}")
            return 0
        fi
    done
    if ! "$TH_VENV/bin/python" -m pytest --version >/dev/null 2>&1; then
        if ! "$TH_VENV/bin/python" -m pip install -q --disable-pip-version-check pytest >>"$log" 2>&1 </dev/null; then
            show_log_tail "$log" 20
            FAILED+=("pip install pytest")
            return 0
        fi
    fi
    for dir in "${dirs[@]}"; do
        info "pytest in $dir/"
        # From inside the folder, so that programs import as they do when deployed.
        (cd "$TH_ROOT/$dir" && "$TH_VENV/bin/python" -m pytest -q </dev/null) || FAILED+=("pytest $dir")
    done
}

# Step 7: the short fault-injection run (services/bench/src/chaos) on the
# debug binaries step 3 built; its last stdout line is the JSON of counts.
run_chaos() {
    local bin="$TH_ROOT/target/debug/chaos"
    if [[ "${TALLYHOUSE_CHAOS:-1}" == 0 ]]; then
        info "chaos: SKIPPED (TALLYHOUSE_CHAOS=0)"
        return 0
    fi
    if [[ " ${FAILED[*]} " == *" cargo build "* || ! -x "$bin" ]]; then
        warn "chaos: not built: skipping the fault-injection run"
        FAILED+=("chaos --short (not built)")
        return 0
    fi
    info "fault injection under load (chaos --short all; logs in .run/logs/chaos/)"
    (cd "$TH_ROOT" && "$bin" --short --no-build all </dev/null) || FAILED+=("chaos --short")
}

main() {
    ensure_run_dirs
    TH_STACK_QUIET=1 "$TH_DEPLOY/stack-up.sh" || die "stack-up.sh failed; no tests run"
    # Provisioning rotates the local services' passwords: only do it when this
    # OpenBao has not been provisioned yet, so tests never pull credentials
    # from under a platform started by up.sh.
    if ! openbao_provisioned; then
        "$TH_DEPLOY/vault-provision.sh" || die "vault-provision.sh failed; no tests run"
    fi

    export TALLYHOUSE_TEST_AMQP_URI="amqp://guest:guest@$TH_HOST:$TH_AMQP_PORT/%2f"
    export VAULT_ADDR="$TH_VAULT_ADDR"
    TALLYHOUSE_TEST_VAULT_ROOT_TOKEN="$(cat "$TH_VAULT_ROOT_TOKEN_FILE")"
    export TALLYHOUSE_TEST_VAULT_ROOT_TOKEN
    export TALLYHOUSE_TEST_DATABASE_URL="postgres://postgres@$TH_HOST:$TH_PG_PORT/postgres"
    export TALLYHOUSE_TEST_S3_ENDPOINT="$TH_S3_ENDPOINT"
    TALLYHOUSE_TEST_S3_ACCESS_KEY_ID="$(read_kv_file "$TH_S3_CREDENTIALS_FILE" access_key_id)"
    TALLYHOUSE_TEST_S3_SECRET_ACCESS_KEY="$(read_kv_file "$TH_S3_CREDENTIALS_FILE" secret_access_key)"
    export TALLYHOUSE_TEST_S3_ACCESS_KEY_ID TALLYHOUSE_TEST_S3_SECRET_ACCESS_KEY
    # A service token or address left in the caller's shell must not leak in.
    unset VAULT_TOKEN BAO_TOKEN BAO_ADDR

    run_rust "$@"
    if (($# == 0)); then
        run_python
        info "fuzzing (fuzz/run.sh, ${TALLYHOUSE_FUZZ_SECONDS:-60} s per target)"
        "$TH_ROOT/fuzz/run.sh" || FAILED+=("fuzz/run.sh")
        run_chaos
    fi

    if ((${#FAILED[@]} > 0)); then
        err "FAILED: ${FAILED[*]}"
        exit 1
    fi
    info "all tests passed"
}

main "$@"
