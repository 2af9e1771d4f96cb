#!/usr/bin/env bash
# The GitHub Actions workflow a user copies, .github/workflows/stress.yml, checked
# and run (called from .ci/run):
#
# 1. Syntax: parsed with a YAML parser (python3's yaml, PyYAML).
# 2. Structure: triggers, one job on a runner with steps; checkout first; the build
#    step; the stress test is `./scripts/stress-test.sh --local test-burst`; the
#    comparison is `analyze compare ci/stress-baseline/burst.json ... --format
#    markdown >> "$GITHUB_STEP_SUMMARY"`; a gates step (`analyze check`); results/
#    uploaded with actions/upload-artifact even when a step failed; the baseline is
#    a readable result of a test-burst run; the steps the README shows are the
#    file's.
# 3. Run: every `run:` step, verbatim and in order, the way the runner runs it
#    (`bash --noprofile --norc -eo pipefail`, the workflow's, job's and step's env,
#    GITHUB_STEP_SUMMARY pointing at a temporary file); `uses:` steps are the
#    runner's business and are skipped (this machine has the toolchain). Then the
#    summary must hold the comparison table and the gates table, and the run must
#    have written a burst result in results/, which the upload step takes.
#
# Its servers use their own ports (STAMPEDE_SMTP_BASE_PORT 23525+, admin 29081+)
# and state directory, so a stack a developer has running is left alone; the
# baseline was measured on the default ports, so the comparison notes that the
# server addresses differ. Takes about a minute after the release build.
#
#   .ci/workflow-e2e.sh          check and run
#   .ci/workflow-e2e.sh --check  only the syntax and structure checks
set -euo pipefail
cd "$(dirname "$0")/.."
WORKFLOW=.github/workflows/stress.yml

export STAMPEDE_SMTP_BASE_PORT="${STAMPEDE_SMTP_BASE_PORT:-23525}"
export STAMPEDE_ADMIN_BASE_PORT="${STAMPEDE_ADMIN_BASE_PORT:-29081}"
export STAMPEDE_STATE_DIR="$PWD/results/.stampede-workflow-e2e"

python3 -c 'import yaml' 2>/dev/null ||
    { echo "error: python3 with PyYAML is needed (Debian: apt-get install python3-yaml)" >&2; exit 1; }

cleanup() {
    local status=$?
    # A failed step may leave the servers it started; stop only this check's.
    ((status == 0)) || ./scripts/stress-test.sh --local stop >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT

mode=${1:-run}
started=$SECONDS
python3 - "$WORKFLOW" "$mode" <<'EOF'
import json, os, subprocess, sys, tempfile, time
import yaml

path, mode = sys.argv[1], sys.argv[2]
problems = []

def fail(msg):
    print(f"\033[31mFAIL:\033[0m {path}: {msg}", file=sys.stderr)
    sys.exit(1)

def passed(msg):
    print(f"\033[32mPASS:\033[0m {msg}")

# 1. Syntax. YAML 1.1 reads the key `on` as true; GitHub reads it as "on".
try:
    with open(path) as f:
        wf = yaml.safe_load(f)
except (OSError, yaml.YAMLError) as e:
    fail(f"not valid YAML: {e}")
if not isinstance(wf, dict):
    fail("the document is not a mapping")
passed(f"{path} parses as YAML")

# 2. Structure.
triggers = wf.get("on", wf.get(True))
if not triggers:
    problems.append("no `on:` triggers")
jobs = wf.get("jobs")
if not isinstance(jobs, dict) or len(jobs) != 1:
    fail("expected exactly one job under `jobs:`")
(job_name, job), = jobs.items()
if not job.get("runs-on"):
    problems.append(f"job {job_name} has no runs-on")
shell = (((job.get("defaults") or {}).get("run") or {}).get("shell")
         or ((wf.get("defaults") or {}).get("run") or {}).get("shell"))
if shell != "bash":
    problems.append(f"the run steps' default shell is {shell!r}, want bash (-eo pipefail)")
steps = job.get("steps")
if not isinstance(steps, list) or not steps:
    fail(f"job {job_name} has no steps")
for i, step in enumerate(steps):
    if not isinstance(step, dict) or ("run" in step) == ("uses" in step):
        problems.append(f"step {i + 1} is not exactly one of run: or uses:")
    elif "run" in step:
        extra = set(step) - {"name", "run", "env", "id"}
        if extra:
            problems.append(f"run step {step.get('name', i + 1)!r} has {sorted(extra)}, "
                            "which this check does not reproduce")
if problems:
    fail("; ".join(problems))

uses = [s.get("uses", "") for s in steps]
runs = [(s.get("name", f"step {i + 1}"), s) for i, s in enumerate(steps) if "run" in s]
def run_index(needle):
    return next((i for i, (_, s) in enumerate(runs) if needle in s["run"]), None)

if not uses[0].startswith("actions/checkout@"):
    problems.append("the first step is not actions/checkout")
build = run_index("cargo build --release")
test = next((i for i, (_, s) in enumerate(runs)
             if s["run"].strip() == "./scripts/stress-test.sh --local test-burst"), None)
compare = run_index("/release/analyze\" compare ci/stress-baseline/burst.json")
check = run_index("/release/analyze\" check")
if build is None or "-p analyze" not in runs[build][1]["run"]:
    problems.append("no step runs `cargo build --release ... -p analyze` (the later steps run that binary)")
if test is None:
    problems.append("no step runs exactly `./scripts/stress-test.sh --local test-burst`")
if compare is None:
    problems.append("no step runs `analyze compare ci/stress-baseline/burst.json ...`")
else:
    text = runs[compare][1]["run"]
    for want in ("--format markdown", '>> "$GITHUB_STEP_SUMMARY"'):
        if want not in text:
            problems.append(f"the compare step lacks {want!r}")
if check is None:
    problems.append("no gates step (`analyze check`)")
if None not in (build, test, compare, check) and not build < test < compare < check:
    problems.append("the run steps are not in the order build, test, compare, gates")
upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
if len(upload) != 1:
    problems.append("no (single) actions/upload-artifact step")
else:
    if str((upload[0].get("with") or {}).get("path", "")).rstrip("/") != "results":
        problems.append("the upload step does not upload results/")
    if upload[0].get("if") != "always()":
        problems.append("the upload step is not `if: always()` (results of a failed run are the ones wanted)")
    if steps[-1] is not upload[0]:
        problems.append("the upload step is not the last")
try:
    base = json.load(open("ci/stress-baseline/burst.json"))
    if base.get("schema") != "stampede.result.v1" or base["run"]["name"] != "burst":
        problems.append("ci/stress-baseline/burst.json is not a stampede.result.v1 test-burst result")
except (OSError, ValueError, KeyError, TypeError) as e:
    problems.append(f"ci/stress-baseline/burst.json is not readable: {e}")
# The README shows the steps; its copy must be the file's (comments aside).
def code(text):
    return "\n".join(l for l in text.splitlines() if l.strip() and not l.strip().startswith("#"))
readme = open("README.md").read()
section = readme.partition("### Stampede in GitHub Actions")[2]
shown = section.partition("```yaml\n")[2].partition("```")[0]
if not shown:
    problems.append("README.md's \"Stampede in GitHub Actions\" shows no ```yaml block of the steps")
elif code(shown) not in code(open(path).read()):
    problems.append("README.md's \"Stampede in GitHub Actions\" shows steps that differ from the file's")
if problems:
    fail("; ".join(problems))
passed(f"{path}: one job ({job_name}), checkout, build, test-burst, compare against "
       "ci/stress-baseline/burst.json to the summary, gates, results/ uploaded always")
if mode == "--check":
    sys.exit(0)

# 3. Run the run: steps verbatim, as the runner does, with the step summary in a
# temporary file.
summary = tempfile.NamedTemporaryFile(prefix="stampede-summary.", suffix=".md", delete=False).name
marker = time.time()
for name, step in runs:
    env = dict(os.environ)
    for scope in (wf.get("env"), job.get("env"), step.get("env")):
        env.update({k: str(v) for k, v in (scope or {}).items()})
    env.update(GITHUB_STEP_SUMMARY=summary, GITHUB_WORKSPACE=os.getcwd(), CI="true")
    print(f"\n\033[1m--- workflow step: {name}\033[0m\n" +
          "\n".join("+ " + line for line in step["run"].rstrip("\n").split("\n")), flush=True)
    t0 = time.time()
    status = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                            env=env).returncode
    if status != 0:
        print(open(summary).read(), file=sys.stderr)
        fail(f"step {name!r} exited {status} (summary so far above)")
    passed(f"step {name!r} ({time.time() - t0:.0f} s)")

text = open(summary).read()
print("\n--- the job summary:\n" + text)
lines = text.splitlines()
# analyze compare's markdown table: a header row naming the figures' columns and
# a row per headline figure; analyze check's: one row per gate.
compare_header = next((l for l in lines if l.startswith("|") and "figure" in l and "base" in l.lower()), None)
if compare_header is None:
    fail("the job summary has no comparison table (analyze compare --format markdown)")
for figure in ("msg/s", "p99"):
    if not any(l.startswith("|") and figure in l for l in lines):
        fail(f"the comparison table has no {figure} row")
if not any(l.startswith("|") and "gate" in l for l in lines) or "gates passed" not in text:
    fail("the job summary has no gates table with its verdict (analyze check --format markdown)")
news = [f for f in os.listdir("results") if f.endswith("-burst.json")
        and os.path.getmtime(os.path.join("results", f)) >= marker]
if not news:
    fail("the stress step wrote no results/*-burst.json (the upload step would have nothing)")
os.unlink(summary)
passed(f"the job summary holds the comparison and the gates; results/{sorted(news)[-1]} is there to upload")
EOF
echo "workflow e2e: $((SECONDS - started)) s"
