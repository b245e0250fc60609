#!/usr/bin/env bash
# gpu_suite.sh: the prepared, bounded measurement run of metajax on a lent GPU (one H200).
#
# Usage:
#   bash scripts/gpu_suite.sh [--smoke] [--out DIR] [--only PART,...] [--budget SECONDS]
#                             [--scale FACTOR] [--torch auto|on|off] [--work DIR]
#   bash scripts/gpu_suite.sh --list            the parts, their time limits and what they need
#   bash scripts/gpu_suite.sh --prepare-data [SRC]
#                                               copy Omniglot into ./data (ignored) to carry it
#
# Parts, in order of value; each runs under `timeout` with its own limit (seconds, full run):
#   bench-maml-omniglot          150  JAX vs PyTorch, second-order MAML Conv4-64 5w1s, both variants
#                                     (--pool stride,max), meta-batch 32,128,512
#   bench-maml-sinusoid           45  JAX vs PyTorch, MAML sinusoid MLP, meta-batch 32,128,512
#   bench-episodic                95  protonet/matchingnet/transformer/snail/feat, 5- and 20-way
#                                     (PyTorch references for ProtoNets and Matching Networks)
#   bench-miniimagenet            80  JAX vs PyTorch on 84x84x3 (Conv4-32 max-pool), 5w1s and 5w5s:
#                                     second-order MAML (5 inner steps, meta-batch 4) and ProtoNets
#   fewshot-snail-omniglot-5w1s  110  paper protocol, training stopped after 1 minute (--time-limit 1.0)
#   bench-bf16                    45  second-order MAML Conv4, float32 against bfloat16, meta-batch 512
#   fewshot-snail-omniglot-20w1s  80  paper protocol, --time-limit 0.5 (runs only if time is left)
#   fewshot-maml-omniglot-5w1s    75  paper protocol, --time-limit 0.5 (if time is left)
#   bench-maml-omniglot-first     50  JAX vs PyTorch, first-order MAML, meta-batch 32,512 (if time is left)
# The suite's budget is 480 s (8 minutes, inside the device's 10 minutes a command): a part
# whose limit exceeds the time left is skipped and recorded as such, so the last parts run
# only when earlier ones finished before their limits. A part that fails or times out is
# recorded and the suite goes on. The fewshot parts' training time limits include compiling;
# the rest of each limit covers start-up, data, evaluation on 1000 test episodes and a margin.
# The limits are estimates (no GPU run has been made yet): each JAX configuration compiles its
# step and, for the FLOP count, one task's gradient (about 65 s together on a busy 2-core CPU,
# assumed 10 to 20 s on the GPU); a PyTorch reference compiles the same gradient for its FLOPs.
# The first GPU run's summary.json gives the wall times to tune them with.
#
# Output (DIR: --out, else $OUT when set, else runs/gpu-suite), at most 8 files (what the
# device returns from $OUT):
#   bench-*.jsonl        the `metajax bench` JSON lines of each bench part: the machine line,
#                        one result per configuration, the JAX/PyTorch ratio lines (recomputed
#                        from the lines written when a part ends early, marked "recomputed");
#                        bench-maml-omniglot-first appends its run to bench-maml-omniglot.jsonl
#   fewshot.jsonl        one `scripts/reproduce_fewshot.py` line per protocol that finished
#   summary.json         machine, mode, budget, and per part: status (ok, failed, timeout,
#                        skipped), the reason, the exit code, wall and budget seconds, the lines
#                        written, the command and the end of its output; rewritten after every part
#   suite.log            every part's stdout and stderr
# Run folders of the fewshot parts (metrics.json, log.jsonl, checkpoints) and per-part logs go
# to the work folder (--work, default runs/gpu-suite-work/<date>), which is not returned.
#
# Data: the device machine receives only the working tree, so Omniglot must travel with it.
# Once, here (not on the device): `bash scripts/gpu_suite.sh --prepare-data /work/shared/data`
# copies the two Omniglot zips (14 MB) and the Vinyals split files (0.4 MB), plus the decoded
# 28x28 cache when one exists (7 MB), into ./data, and ignores that folder through
# .git/info/exclude. The device call then passes carry ["data"]. When ./data exists the
# suite sets METAJAX_DATA=./data (and METAJAX_CACHE=./data/cache unless set); otherwise it
# keeps $METAJAX_DATA. Parts needing Omniglot are skipped, with the reason recorded, when the
# zips or split files are missing. miniImageNet is too large to carry; no part uses it.
#
# On the device (tool `run`, one call, timeout_s 600; PYTHONPATH=src is set by the script):
#   run(command="bash scripts/gpu_suite.sh", carry=["data"], timeout_s=600)
# $OUT's files come back; publish them under docs/results/gpu/.
#
# --smoke runs every part with tiny sizes (one timed step, meta-batch 2, 2 training steps, 4
# test episodes; PyTorch only when importable) through the same commands and files, so the
# whole suite runs on a CPU in minutes. --scale multiplies every time limit, the training
# limits and the budget (a slower machine: 2; tests: 0.01). GPU_SUITE_PYTHON names the Python
# interpreter (default python3, else python). Exit status: 0 when the suite ran to its end
# (whatever its parts' statuses), 2 for bad arguments.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_PWD=$PWD
PARTS=(
  bench-maml-omniglot bench-maml-sinusoid bench-episodic bench-miniimagenet
  fewshot-snail-omniglot-5w1s bench-bf16 fewshot-snail-omniglot-20w1s fewshot-maml-omniglot-5w1s
  bench-maml-omniglot-first
)
declare -A LIMIT=(
  [bench-maml-omniglot]=150 [bench-maml-sinusoid]=45 [bench-episodic]=95 [bench-miniimagenet]=80
  [fewshot-snail-omniglot-5w1s]=110 [bench-bf16]=45 [fewshot-snail-omniglot-20w1s]=80
  [fewshot-maml-omniglot-5w1s]=75 [bench-maml-omniglot-first]=50
)
# Smoke limits are guards for a slow shared CPU, not estimates.
SMOKE_LIMIT=480
# Parts whose lines go to another part's file (the device returns at most 8 files).
declare -A OUTFILE=([bench-maml-omniglot-first]=bench-maml-omniglot)
# Minutes of meta-training of each fewshot part (reproduce_fewshot.py --time-limit).
declare -A TRAIN_MINUTES=(
  [fewshot-snail-omniglot-5w1s]=1.0 [fewshot-snail-omniglot-20w1s]=0.5 [fewshot-maml-omniglot-5w1s]=0.5
)
BUDGET_FULL=480
BUDGET_SMOKE=3600

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

die_usage() {
  echo "gpu_suite.sh: $1" >&2
  echo "Try: bash scripts/gpu_suite.sh --help" >&2
  exit 2
}

is_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
greater() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
now() { date +%s.%N; }

# A JSON string of $1: printable ASCII, tabs and newlines kept (escaped), other bytes dropped.
json_str() {
  local s
  s=$(printf '%s' "$1" | LC_ALL=C tr -cd '\11\12\40-\176')
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}

json_list() {
  local out="" item
  for item in "$@"; do out+="${out:+, }$(json_str "$item")"; done
  printf '[%s]' "$out"
}

# ----------------------------------------------------------------------------- data

# The Omniglot files metajax.datasets.load_omniglot reads (zips in ROOT or ROOT/omniglot,
# Vinyals splits in ROOT/omniglot/splits/vinyals or ROOT/splits/vinyals); prints what is missing.
omniglot_missing() {
  local root=$1 name found dir missing=()
  for name in images_background.zip images_evaluation.zip; do
    [[ -f $root/$name || -f $root/omniglot/$name ]] || missing+=("$name")
  done
  for name in train.txt val.txt test.txt; do
    found=0
    for dir in "$root/omniglot/splits/vinyals" "$root/splits/vinyals"; do
      [[ -f $dir/$name ]] && found=1
    done
    ((found)) || missing+=("splits/vinyals/$name")
  done
  printf '%s' "${missing[*]:-}"
}

# The folder metajax.datasets caches a data root's arrays in (cache_folder): the SHA-256 of its resolved path.
root_key() { printf '%s' "$(cd "$1" && pwd -P)" | sha256sum | cut -c1-16; }

prepare_data() {
  local src=${1:-${METAJAX_DATA:-}} dest=$ROOT/data name dir cache exclude
  [[ -n $src ]] || die_usage "--prepare-data needs SRC (or \$METAJAX_DATA): the folder holding the Omniglot zips"
  [[ -d $src ]] || die_usage "--prepare-data: $src is not a folder"
  local missing
  missing=$(omniglot_missing "$src")
  [[ -z $missing ]] || die_usage "--prepare-data: $src lacks $missing"
  mkdir -p "$dest/omniglot/splits/vinyals"
  for name in images_background.zip images_evaluation.zip; do
    if [[ -f $src/omniglot/$name ]]; then cp "$src/omniglot/$name" "$dest/omniglot/"; else cp "$src/$name" "$dest/omniglot/"; fi
  done
  for name in train.txt val.txt test.txt trainval.txt; do
    for dir in "$src/omniglot/splits/vinyals" "$src/splits/vinyals"; do
      if [[ -f $dir/$name ]]; then
        cp "$dir/$name" "$dest/omniglot/splits/vinyals/"
        break
      fi
    done
  done
  # The loader caches each data root's arrays apart; the copy is filed under the device's root when the suite starts.
  cache=${METAJAX_CACHE:-$HOME/.cache/metajax/cache}/omniglot/$(root_key "$src")
  if compgen -G "$cache/*_28px.npz" >/dev/null; then
    mkdir -p "$dest/cache/omniglot"
    cp "$cache"/*_28px.npz "$dest/cache/omniglot/"
  fi
  if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && ! git -C "$ROOT" check-ignore -q data/; then
    exclude=$(git -C "$ROOT" rev-parse --git-path info/exclude)
    [[ $exclude = /* ]] || exclude=$ROOT/$exclude
    mkdir -p "$(dirname "$exclude")"
    echo "/data/" >>"$exclude"
  fi
  echo "Copied into $dest ($(du -sh "$dest" | cut -f1)); carry it: run(..., carry=[\"data\"])."
}

# ----------------------------------------------------------------------------- arguments

SMOKE=0
DIR=""
ONLY=""
BUDGET=""
SCALE=1
TORCH=auto
WORK=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --list)
      for p in "${PARTS[@]}"; do
        needs=none
        [[ $p != bench-* ]] && needs=omniglot
        printf '%-30s %4s s  needs %s\n' "$p" "${LIMIT[$p]}" "$needs"
      done
      printf 'budget %s s (smoke: %s s, each part %s s)\n' "$BUDGET_FULL" "$BUDGET_SMOKE" "$SMOKE_LIMIT"
      exit 0
      ;;
    --prepare-data)
      if [[ $# -ge 2 && $2 != --* ]]; then prepare_data "$2"; else prepare_data ""; fi
      exit 0
      ;;
    --smoke) SMOKE=1 ;;
    --out | --only | --budget | --scale | --torch | --work)
      [[ $# -ge 2 ]] || die_usage "$1 needs a value"
      case $1 in
        --out) DIR=$2 ;;
        --only) ONLY=$2 ;;
        --budget) BUDGET=$2 ;;
        --scale) SCALE=$2 ;;
        --torch) TORCH=$2 ;;
        --work) WORK=$2 ;;
      esac
      shift
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
  shift
done
is_number "$SCALE" && greater "$SCALE" 0 || die_usage "--scale must be a positive number, got $SCALE"
[[ -z $BUDGET ]] || { is_number "$BUDGET" && greater "$BUDGET" 0; } || die_usage "--budget must be positive seconds, got $BUDGET"
[[ $TORCH =~ ^(auto|on|off)$ ]] || die_usage "--torch must be auto, on or off, got $TORCH"
if [[ -n $ONLY ]]; then
  IFS=, read -r -a only_list <<<"$ONLY"
  for p in "${only_list[@]}"; do
    [[ -n ${LIMIT[$p]:-} ]] || die_usage "--only: unknown part $p (see --list)"
  done
fi
if [[ -z $BUDGET ]]; then
  BUDGET=$BUDGET_FULL
  ((SMOKE)) && BUDGET=$BUDGET_SMOKE
fi
BUDGET=$(calc "$BUDGET * $SCALE")

absolute() { if [[ $1 = /* ]]; then printf '%s' "$1"; else printf '%s' "$CALLER_PWD/$1"; fi; }
if [[ -n $DIR ]]; then DIR=$(absolute "$DIR"); elif [[ -n ${OUT:-} ]]; then DIR=$(absolute "$OUT"); else DIR=$ROOT/runs/gpu-suite; fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
if [[ -n $WORK ]]; then WORK=$(absolute "$WORK"); else WORK=$ROOT/runs/gpu-suite-work/$STAMP-$$; fi
mkdir -p "$DIR" "$WORK" || die_usage "cannot create $DIR or $WORK"

# ----------------------------------------------------------------------------- environment

cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${GPU_SUITE_PYTHON:-}
if [[ -z $PY ]]; then
  if command -v python3 >/dev/null; then PY=python3; else PY=python; fi
fi
if [[ -d $ROOT/data ]]; then
  export METAJAX_DATA=$ROOT/data
  export METAJAX_CACHE=${METAJAX_CACHE:-$ROOT/data/cache}
  if compgen -G "$METAJAX_CACHE/omniglot/*_28px.npz" >/dev/null; then  # as --prepare-data copied it
    mkdir -p "$METAJAX_CACHE/omniglot/$(root_key "$METAJAX_DATA")"
    mv "$METAJAX_CACHE"/omniglot/*_28px.npz "$METAJAX_CACHE/omniglot/$(root_key "$METAJAX_DATA")/"
  fi
fi
DATA_ROOT=${METAJAX_DATA:-$HOME/.cache/metajax}  # where metajax.datasets looks
DATA_MISSING=$(omniglot_missing "$DATA_ROOT")

NOTES=()
if [[ $TORCH == auto ]]; then
  if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
    TORCH=on
  else
    TORCH=off
    NOTES+=("PyTorch is not importable: the bench parts ran without their PyTorch references (no ratio lines)")
  fi
fi
TORCH_FLAG=()
[[ $TORCH == on ]] && TORCH_FLAG=(--torch)
GPU=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 4)
if [[ -z $GPU ]] && ((!SMOKE)); then
  NOTES+=("no NVIDIA GPU answered nvidia-smi: these are not GPU figures")
fi
PROBE=$(timeout 60 "$PY" -c '
import importlib.metadata as m, json, platform
names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
         "flax", "optax", "chex", "orbax-checkpoint", "numpy", "torch")
packages = {}
for name in names:
    try:
        packages[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps({"python": platform.python_version(), "packages": packages}))
' 2>/dev/null | tail -n 1)
[[ $PROBE == \{* ]] || PROBE=null
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null) || COMMIT=""
DIRTY=null
[[ -n $COMMIT ]] && DIRTY=$([[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && echo true || echo false)

MACHINE="{\"hostname\": $(json_str "$(hostname 2>/dev/null)"), \"uname\": $(json_str "$(uname -srm)")"
CPUS=$(nproc 2>/dev/null)
MEM_KB=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo 2>/dev/null)
MACHINE+=", \"cpu_count\": ${CPUS:-null}, \"mem_total_kb\": ${MEM_KB:-null}"
MACHINE+=", \"gpu\": $([[ -n $GPU ]] && json_str "$GPU" || echo null), \"software\": $PROBE"
MACHINE+=", \"git_commit\": $([[ -n $COMMIT ]] && json_str "$COMMIT" || echo null), \"git_dirty\": $DIRTY}"

# ----------------------------------------------------------------------------- bookkeeping

# Only this suite's own files are replaced; anything else in DIR stays.
rm -f "$DIR/summary.json" "$DIR/suite.log" "$DIR/fewshot.jsonl"
for p in "${PARTS[@]}"; do rm -f "$DIR/$p.jsonl"; done
: >"$DIR/suite.log"

T0=$(now)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RECORDS=()
PART_PID=""
CURRENT=""

write_summary() {
  local finished=$1 state=$2 records=""
  local r
  for r in "${RECORDS[@]}"; do records+="${records:+,
    }$r"; done
  {
    printf '{\n  "suite": "scripts/gpu_suite.sh",\n  "mode": "%s",\n' "$([[ $SMOKE == 1 ]] && echo smoke || echo full)"
    printf '  "state": "%s",\n  "started": "%s",\n  "finished": %s,\n' "$state" "$STARTED" "$finished"
    printf '  "wall_s": %s,\n  "budget_s": %s,\n  "scale": %s,\n' "$(calc "$(now) - $T0")" "$BUDGET" "$SCALE"
    printf '  "torch": "%s",\n  "machine": %s,\n' "$TORCH" "$MACHINE"
    printf '  "env": {"METAJAX_DATA": %s, "METAJAX_CACHE": %s, "XLA_FLAGS": %s, "python": %s},\n' \
      "$(json_str "${METAJAX_DATA:-}")" "$(json_str "${METAJAX_CACHE:-}")" "$(json_str "${XLA_FLAGS:-}")" "$(json_str "$PY")"
    printf '  "out_dir": %s,\n  "work_dir": %s,\n' "$(json_str "$DIR")" "$(json_str "$WORK")"
    printf '  "notes": %s,\n' "$(json_list "${NOTES[@]}")"
    printf '  "parts": [\n    %s\n  ]\n}\n' "$records"
  } >"$WORK/summary.json.tmp" && mv "$WORK/summary.json.tmp" "$DIR/summary.json"  # DIR holds only results
}

on_signal() {
  [[ -n $PART_PID ]] && kill -TERM "$PART_PID" 2>/dev/null
  NOTES+=("interrupted by SIG$1 after $(calc "$(now) - $T0") s${CURRENT:+, during part $CURRENT}")
  write_summary null interrupted
  if [[ $1 == INT ]]; then exit 130; fi
  exit 143
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# record NAME STATUS REASON EXIT WALL LIMIT FILE LINES COMMAND TAIL [EXTRA_JSON]
record() {
  local r
  r="{\"name\": $(json_str "$1"), \"status\": \"$2\", \"reason\": $([[ -n $3 ]] && json_str "$3" || echo null)"
  r+=", \"exit_code\": ${4:-null}, \"wall_s\": ${5:-null}, \"limit_s\": ${6:-null}"
  r+=", \"file\": $([[ -n $7 ]] && json_str "$7" || echo null), \"lines\": ${8:-null}"
  r+=", \"command\": $([[ -n $9 ]] && json_str "$9" || echo null), \"output_tail\": $([[ -n ${10} ]] && json_str "${10}" || echo null)${11:+, ${11}}}"
  RECORDS+=("$r")
  write_summary null running
  printf '[gpu_suite] %-30s %-8s %s\n' "$1" "$2" "${3:-}" >&2
}

# Runs "$@" under `timeout LIMIT` in the background (so a signal to the suite is handled at once);
# sets RC and WALL; stdout and stderr go to WORK/NAME.out and WORK/NAME.err and into suite.log.
run_limited() {
  local name=$1 limit=$2
  shift 2
  local t
  t=$(now)
  printf '===== %s (limit %s s): %s\n' "$name" "$limit" "$*" >>"$DIR/suite.log"
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PART_PID=$!
  wait "$PART_PID"
  RC=$?
  PART_PID=""
  WALL=$(calc "$(now) - $t")
  {
    echo "----- stdout"
    tail -n 2000 "$WORK/$name.out"
    echo "----- stderr"
    tail -n 2000 "$WORK/$name.err"
    echo "----- exit $RC after $WALL s"
  } >>"$DIR/suite.log"
}

# ok, timeout (124 from timeout, or 137 when the kill after the grace period came), else failed.
status_of() {
  case $1 in
    0) echo ok ;;
    124) echo timeout ;;
    137) if greater "$WALL" "$2"; then echo timeout; else echo failed; fi ;;
    *) echo failed ;;
  esac
}

tail_of() { tail -n 25 "$WORK/$1.err"; }

# When a bench part ended before printing its ratio lines, compute them (bench's own
# ratios()) from the lines it wrote since its machine line, and append them marked "recomputed".
recompute_ratios() {
  timeout 120 "$PY" -c '
import json, sys
from metajax._io import append_json_line
from metajax.app.bench import ratios
path = sys.argv[1]
lines = []
with open(path) as f:
    for text in f:
        try:
            lines.append(json.loads(text))
        except ValueError:
            pass  # a line cut short by the time limit
start = max((i for i, r in enumerate(lines) if r.get("kind") == "machine"), default=0)
run = lines[start:]
if not any(r.get("kind") == "ratio" for r in run):
    for record in ratios(run):
        record["recomputed"] = "by gpu_suite.sh: the part ended before bench printed its ratio lines"
        append_json_line(path, record)
' "$1" >>"$DIR/suite.log" 2>&1
}

count() { grep -c "$1" "$2" 2>/dev/null || true; }

# bench_part NAME LIMIT TORCH FULL_ARGS -- SMOKE_ARGS: one `metajax bench` invocation, in-process
# (one start-up of JAX and CUDA for all its configurations), lines appended to DIR/NAME.jsonl;
# TORCH (with/without) says whether the part asks for the PyTorch references.
bench_part() {
  local name=$1 limit=$2 torch=$3
  shift 3
  local full=() smoke=()
  while (($#)) && [[ $1 != -- ]]; do full+=("$1"); shift; done
  shift
  smoke=("$@")
  local file=$DIR/${OUTFILE[$name]:-$name}.jsonl args before=0
  [[ -f $file ]] && before=$(wc -l <"$file" | tr -d ' ')
  if ((SMOKE)); then args=("${smoke[@]}" --steps 1 --warmup 0 --matmul-size 128); else args=("${full[@]}" --steps 5 --warmup 2); fi
  [[ $torch == with ]] && args+=("${TORCH_FLAG[@]}")
  local cmd=("$PY" -m metajax.app.cli bench "${args[@]}" --in-process --out "$file")
  run_limited "$name" "$limit" "${cmd[@]}"
  local status reason=""
  status=$(status_of "$RC" "$limit")
  [[ $status == timeout ]] && reason="stopped at its limit of $limit s; the lines written before stay"
  [[ $status == failed ]] && reason="exit status $RC"
  if [[ $status != ok && -s $file ]]; then recompute_ratios "$file"; fi
  # This part's own lines (its file may hold an earlier part's run before them).
  local own=$WORK/$name.lines results errors ratios
  if [[ -f $file ]]; then tail -n "+$((before + 1))" "$file" >"$own"; else : >"$own"; fi
  results=$(count '"kind": "result"' "$own")
  errors=$(count '"kind": "error"' "$own")
  ratios=$(count '"kind": "ratio"' "$own")
  if [[ $status == ok && $errors != 0 ]]; then reason="$errors configuration(s) recorded an error line"; fi
  local lines
  lines=$(wc -l <"$own" | tr -d ' ')
  record "$name" "$status" "$reason" "$RC" "$WALL" "$limit" "$(basename "$file")" "$lines" "${cmd[*]}" \
    "$(tail_of "$name")" "\"results\": ${results:-0}, \"errors\": ${errors:-0}, \"ratios\": ${ratios:-0}"
}

# fewshot_part NAME PROTOCOL: scripts/reproduce_fewshot.py at the paper's settings, training
# stopped by --time-limit; its JSON line is appended to DIR/fewshot.jsonl.
fewshot_part() {
  local name=$1 limit=$2 protocol=$3
  local minutes file=$DIR/fewshot.jsonl
  minutes=$(calc "${TRAIN_MINUTES[$name]} * $SCALE")
  local cmd=("$PY" scripts/reproduce_fewshot.py --protocol "$protocol" --budget paper --time-limit "$minutes"
    --out "$WORK/fewshot")
  if ((SMOKE)); then cmd+=(--steps 2 --eval-tasks 4); fi
  run_limited "$name" "$limit" "${cmd[@]}"
  local status reason="" lines
  status=$(status_of "$RC" "$limit")
  lines=$(grep -c '^{' "$WORK/$name.out" 2>/dev/null || true)
  grep '^{' "$WORK/$name.out" >>"$file" 2>/dev/null
  [[ $status == timeout ]] && reason="stopped at its limit of $limit s"
  [[ $status == failed ]] && reason="exit status $RC"
  if [[ $status == ok && ${lines:-0} == 0 ]]; then status=failed reason="exit status 0 but no JSON line"; fi
  # Where training got to, from the run's own log (its last entry), when no result line came.
  local extra="" last
  if [[ $status != ok && -s $WORK/fewshot/$protocol/log.jsonl ]]; then
    last=$(tail -n 1 "$WORK/fewshot/$protocol/log.jsonl")
    if printf '%s' "$last" | "$PY" -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
      extra="\"last_train_log\": $last"
    fi
  fi
  record "$name" "$status" "$reason" "$RC" "$WALL" "$limit" "$(basename "$file")" "${lines:-0}" "${cmd[*]}" \
    "$(tail_of "$name")" "$extra"
}

run_part() {
  local name=$1 limit
  CURRENT=$name
  limit=$(calc "${LIMIT[$name]} * $SCALE")
  ((SMOKE)) && limit=$(calc "$SMOKE_LIMIT * $SCALE")
  if [[ -n $ONLY && ,$ONLY, != *,$name,* ]]; then
    record "$name" skipped "not selected by --only $ONLY" "" "" "$limit" "" "" "" ""
    return
  fi
  if [[ $name == fewshot-* && -n $DATA_MISSING ]]; then
    record "$name" skipped "no Omniglot data: $DATA_ROOT lacks $DATA_MISSING (carry ./data, see --prepare-data)" \
      "" "" "$limit" "" "" "" ""
    return
  fi
  local left
  left=$(calc "$BUDGET - ($(now) - $T0)")
  if greater "$limit" "$left"; then
    record "$name" skipped "its limit of $limit s exceeds the $left s left of the suite's $BUDGET s" "" "" "$limit" "" "" "" ""
    return
  fi
  case $name in
    bench-maml-omniglot)
      bench_part "$name" "$limit" with --workload maml-omniglot --order second --pool stride,max \
        --meta-batch 32,128,512 \
        -- --workload maml-omniglot --order second --pool stride,max --meta-batch 2 ;;
    bench-maml-sinusoid)
      bench_part "$name" "$limit" with --workload maml-sinusoid --meta-batch 32,128,512 \
        -- --workload maml-sinusoid --meta-batch 2 --steps-per-call 2 ;;
    bench-episodic)
      bench_part "$name" "$limit" with \
        --workload protonet-omniglot,matchingnet-omniglot,transformer-omniglot,snail-omniglot,feat-omniglot --ways 5,20 \
        -- --workload protonet-omniglot,matchingnet-omniglot,transformer-omniglot,snail-omniglot,feat-omniglot --ways 5 ;;
    bench-miniimagenet)
      bench_part "$name" "$limit" with --workload maml-omniglot,protonet-omniglot --image miniimagenet \
        --order second --ways 5 --shots 1,5 \
        -- --workload maml-omniglot,protonet-omniglot --image miniimagenet --order second --ways 5 --shots 1 \
        --meta-batch 1 --inner-steps 1 ;;
    bench-bf16)
      bench_part "$name" "$limit" without --workload maml-omniglot --order second --meta-batch 512 --dtype float32,bfloat16 \
        -- --workload maml-omniglot --order second --meta-batch 2 --dtype bfloat16 ;;
    bench-maml-omniglot-first)
      bench_part "$name" "$limit" with --workload maml-omniglot --order first --meta-batch 32,512 \
        -- --workload maml-omniglot --order first --meta-batch 2 ;;
    fewshot-*)
      fewshot_part "$name" "$limit" "${name#fewshot-}" ;;
  esac
}

write_summary null running
for part in "${PARTS[@]}"; do
  run_part "$part"
done
write_summary "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"" complete
echo "[gpu_suite] done in $(calc "$(now) - $T0") s; summary: $DIR/summary.json" >&2
