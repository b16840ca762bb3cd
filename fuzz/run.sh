#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a bounded time each (the fuzz step
# of deployment/test.sh, and the way to fuzz longer by hand).
#   fuzz/run.sh                      every target, TALLYHOUSE_FUZZ_SECONDS (60) each
#   TALLYHOUSE_FUZZ_SECONDS=3600 fuzz/run.sh package jwt
#   TALLYHOUSE_FUZZ_SECONDS=0 skips the step.
# Needs the nightly toolchain (sanitizers): without it the step says so and
# is skipped. cargo-fuzz is installed from crates.io when missing.
# Each target starts from its committed seeds (fuzz/seeds/<target>/) and the
# local corpus (fuzz/corpus/<target>/, kept between runs, not committed).
# A crash fails the step; its input is in fuzz/artifacts/<target>/: keep it
# under fuzz/regressions/<target>/ (plain `cargo test -p evidence --test
# bad_input` then runs it) and fix the bug.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../deployment/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deployment/lib.sh"

FUZZ_DIR="$TH_ROOT/fuzz"
SECONDS_EACH="${TALLYHOUSE_FUZZ_SECONDS:-60}"
LOG_DIR="$TH_LOGS/fuzz"

main() {
    if [[ "$SECONDS_EACH" == 0 ]]; then
        info "fuzz: TALLYHOUSE_FUZZ_SECONDS=0, skipping"
        return 0
    fi
    [[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || die "TALLYHOUSE_FUZZ_SECONDS must be a whole number of seconds"
    if ! cargo +nightly --version >/dev/null 2>&1; then
        warn "fuzz: SKIPPED: no nightly Rust toolchain (cargo-fuzz needs it for the sanitizers); install it with: rustup toolchain install nightly"
        return 0
    fi
    mkdir -p "$LOG_DIR"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        info "fuzz: installing cargo-fuzz (log: ${LOG_DIR#"$TH_ROOT"/}/install.log)"
        if ! cargo install cargo-fuzz --locked >"$LOG_DIR/install.log" 2>&1 </dev/null; then
            show_log_tail "$LOG_DIR/install.log" 20
            die "fuzz: cargo install cargo-fuzz failed"
        fi
    fi
    cd "$FUZZ_DIR"
    local targets=("$@")
    if ((${#targets[@]} == 0)); then
        mapfile -t targets < <(cargo fuzz list)
    fi
    info "fuzz: building ${targets[*]} (nightly, AddressSanitizer; log: ${LOG_DIR#"$TH_ROOT"/}/build.log)"
    if ! cargo +nightly fuzz build >"$LOG_DIR/build.log" 2>&1 </dev/null; then
        show_log_tail "$LOG_DIR/build.log" 40
        die "fuzz: cargo fuzz build failed"
    fi
    local target log failed=()
    for target in "${targets[@]}"; do
        log="$LOG_DIR/$target.log"
        mkdir -p "corpus/$target"
        if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
            -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
            >"$log" 2>&1 </dev/null; then
            info "fuzz: $target: $(summary "$log")"
        else
            show_log_tail "$log" 30
            err "fuzz: $target FAILED (log: ${log#"$TH_ROOT"/}); its input is in fuzz/artifacts/$target/: keep it as fuzz/regressions/$target/<what-it-broke> and fix the bug"
            failed+=("$target")
        fi
    done
    ((${#failed[@]} == 0)) || die "fuzz: crashes in ${failed[*]}"
}

# summary LOG: "N runs in S s, coverage C, corpus K inputs".
summary() {
    local done_line stats
    done_line="$(grep -E '^Done [0-9]+ runs' "$1" | tail -1)"
    stats="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$1" | tail -1)"
    printf '%s; %s' "${done_line:-no summary}" \
        "$(sed -nE 's/.*cov: ([0-9]+).*corp: ([0-9]+).*/coverage \1 edges, corpus \2 inputs/p' <<<"$stats")"
}

main "$@"
