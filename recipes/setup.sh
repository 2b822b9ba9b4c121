#!/usr/bin/env bash
# Installs everything a fresh machine needs, and nothing when it is already there:
#   Debian packages (recipes/apt-packages.txt) and a venv (.venv) with torch==2.13.0 first,
#   then the pinned packages of requirements.txt, then this project in editable mode.
# Usage: bash recipes/setup.sh [--force]
# Env:   VENV (default: <repo>/.venv); TIMING_LOG (default: <repo>/exp/timing.tsv) gets a
#        "setup start end" line when something was installed (results/timing.json counts it)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
force=false
case "${1:-}" in
  --force) force=true ;;
  "") ;;
  *) echo "Usage: $0 [--force]" >&2; exit 1 ;;
esac

# The stamp holds a hash of every file that defines the environment: edit one and setup reruns.
want=$(cat "$root/recipes/apt-packages.txt" "$root/requirements.txt" "$root/pyproject.toml" \
       "$root/recipes/setup.sh" | sha256sum | cut -c1-16)
stamp=$venv/.setup-stamp
if ! $force && [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi

t0=${EPOCHREALTIME/,/.}
echo "setup: checking Debian packages" >&2
missing=()
for pkg in $(grep -v '^\s*#' "$root/recipes/apt-packages.txt"); do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  echo "setup: apt-get install ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "setup: python venv at $venv" >&2
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0          # first: anything else could pull a multi-GB CUDA build
"${pip[@]}" -r "$root/requirements.txt"
"${pip[@]}" --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -m pip check >&2
echo "$want" > "$stamp"
log=${TIMING_LOG:-$root/exp/timing.tsv}
mkdir -p "$(dirname "$log")"
printf 'setup\t%s\t%s\n' "$t0" "${EPOCHREALTIME/,/.}" >> "$log"
echo "setup: done" >&2
