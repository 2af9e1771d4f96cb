#!/usr/bin/env bash
# Look at stress-test results: thin wrappers over the `analyze` binary.
#
#   scripts/analyze-results.sh list                   every result in results/, newest first
#   scripts/analyze-results.sh latest                 the newest result in detail
#   scripts/analyze-results.sh analyze FILE           one result in detail (analyze show)
#   scripts/analyze-results.sh summary                one row per result
#   scripts/analyze-results.sh compare BASE NEW [--threshold 5%] [--format markdown]
#                                                     deltas; exit 1 on a regression
#   scripts/analyze-results.sh compare --base A.json B.json --new C.json D.json
#                                                     repeated runs: medians compared
#   scripts/analyze-results.sh chart FILE [DIR]       PNG/SVG charts (default FILE-charts/)
#
# Extra arguments are passed to analyze unchanged. Runs from any directory; results
# are looked up in the repository's results/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ANALYZE="${CARGO_TARGET_DIR:-$ROOT/target}/release/analyze"

die() { printf 'error: %s\n' "$*" >&2; exit 2; }

usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

if [[ ! -x "$ANALYZE" ]]; then
    command -v cargo >/dev/null 2>&1 || die "$ANALYZE is missing and cargo is not installed"
    echo "==> building analyze (cargo build --release -p analyze)" >&2
    cargo build --release -p analyze >&2
fi

verb="${1:-}"
(($# > 0)) && shift
case "$verb" in
    list) exec "$ANALYZE" list "$@" ;;
    latest) exec "$ANALYZE" latest "$@" ;;
    analyze | show)
        (($# >= 1)) || die "usage: $0 analyze FILE"
        [[ -f "$1" ]] || die "no such result file: $1"
        exec "$ANALYZE" show "$@"
        ;;
    summary) exec "$ANALYZE" summary "$@" ;;
    compare)
        # Two forms: BASE NEW, or --base FILE... --new FILE... (repeats, medians
        # compared); analyze itself checks the second form's files and names them.
        if [[ "${1:-}" != -* ]]; then
            (($# >= 2)) || die "usage: $0 compare BASE NEW [--threshold 5%] [--format table|markdown|json], or compare --base FILE... --new FILE..."
            [[ -f "$1" ]] || die "no such result file: $1"
            [[ -f "$2" ]] || die "no such result file: $2"
        fi
        exec "$ANALYZE" compare "$@"
        ;;
    chart)
        (($# >= 1)) || die "usage: $0 chart FILE [DIR]"
        [[ -f "$1" ]] || die "no such result file: $1"
        exec "$ANALYZE" chart "$1" --out "${2:-${1%.json}-charts}"
        ;;
    "" | -h | --help | help) usage ;;
    *) usage >&2; die "unknown verb '$verb'" ;;
esac
