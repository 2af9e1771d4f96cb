#!/usr/bin/env bash
# Runs the README's CI example verbatim: the `run: |` block of the step named
# "Performance gate" in the README's "Comparing in CI" section, read from the README
# itself, so the example a user copies is the one CI runs and cannot drift from it.
#
#   .ci/readme-ci-example.sh          run it (from the repository root)
#   .ci/readme-ci-example.sh --print  only print the commands
set -euo pipefail
cd "$(dirname "$0")/.."
STEP="Performance gate"

# The block's lines, de-indented. Exits 1 when the README has no such step.
extract() {
    awk -v step="- name: $STEP" '
        function indent(s) { match(s, /^ */); return RLENGTH }
        !found && index($0, step) { found = 1; next }
        found && !inrun && /^ *run: \|$/ { inrun = 1; base = -1; next }
        inrun {
            if ($0 ~ /^ *$/) { print ""; next }
            if (base < 0) base = indent($0)
            if (indent($0) < base) exit
            print substr($0, base + 1)
        }
        END { if (!inrun) exit 1 }
    ' README.md
}

commands=$(extract) || { echo "error: README.md has no '$STEP' step with a run block" >&2; exit 2; }
[[ -n $commands ]] || { echo "error: the README's '$STEP' step runs nothing" >&2; exit 2; }
printf '%s\n' "$commands" | sed 's/^/+ /' >&2
[[ ${1:-} == --print ]] && exit 0
# GitHub Actions runs a run block with `bash -e {0}`, plus pipefail here.
exec bash -eo pipefail -c "$commands"
