# Sourced by this folder's variant scripts. Each runs configs/paper-transformer-small.toml
# with its overrides in its own run directory, runs/paper-transformer-small-NAME, started
# from the finished cells of the main run (runs/paper-transformer-small-r13) that
# benchmarks/fork_run.py copies. Resumable: run the script again to finish.
set -e
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OMP_NUM_THREADS=1

# variant NAME JOBS [fork_run.py options ...] -- [kfacel experiment --set options ...]
variant() {
  local name=paper-transformer-small-$1 jobs=$2 config=configs/paper-transformer-small.toml
  shift 2
  local fork=()
  while [ "$1" != "--" ]; do fork+=("$1"); shift; done
  shift
  local run=runs/$name
  local sets=("$@" --set "name=\"$name\"" --set "output_dir=\"$run\"")
  [ -d "$run" ] || .venv/bin/python benchmarks/fork_run.py runs/paper-transformer-small-r13 \
      "$run" "$config" "${fork[@]}" "${sets[@]}"
  .venv/bin/kfacel experiment "$config" --out "$run" "${sets[@]}" --jobs "$jobs"
}
