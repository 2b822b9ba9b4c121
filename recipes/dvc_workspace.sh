#!/usr/bin/env bash
# A DVC workspace for one profile: a copy of this recipe (git's tracked and untracked, not
# ignored files, without results/ and dvc.lock) whose params.yaml is the profile's effective
# params with `run_variants` as a list (dvc.yaml's foreach over the student variants). DVC reads
# params.yaml only, so this is how a profile chooses which variant stages `dvc repro` runs
# (`dvc exp run -S profile=tiny` in the main checkout keeps the default profile's variants).
#
# Usage: bash recipes/dvc_workspace.sh PROFILE DIR      then: cd DIR && dvc repro
#   e.g. bash recipes/dvc_workspace.sh tiny /tmp/tiny && (cd /tmp/tiny && dvc repro)
# DIR must not exist yet. It shares this checkout's .venv (a link); the profile's
# recipes/conf file there is empty, since params.yaml already holds its values.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
fi
profile=$1 dir=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[[ -f recipes/conf/$profile.yaml ]] || { echo "dvc_workspace: recipes/conf/$profile.yaml: no such profile; use one of: $(cd recipes/conf && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2; exit 1; }
[[ ! -e $dir ]] || { echo "dvc_workspace: $dir exists; give a new directory" >&2; exit 1; }
[[ -x .venv/bin/python ]] || { echo "dvc_workspace: $root/.venv missing; run bash recipes/setup.sh first" >&2; exit 1; }

tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
git ls-files -z --cached --others --exclude-standard \
  | grep -zv -E '^(results/|dvc\.lock$)' \
  | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
  | xargs -0 cp --parents -t "$tmp"
ln -s "$root/.venv" "$tmp/.venv"
.venv/bin/python -m millionhours.config --profile "$profile" --workspace > "$tmp/params.yaml"
echo "{}  # this workspace's params.yaml holds the whole $profile profile" > "$tmp/recipes/conf/$profile.yaml"
mkdir -p "$tmp/results"
(cd "$tmp" && "$root/.venv/bin/python" -m dvc config core.no_scm true)   # not a git checkout
mv "$tmp" "$dir"
echo "dvc_workspace: $dir ($profile profile, variants: $(.venv/bin/python -m millionhours.config --params "$dir/params.yaml" --run-variants)); next: cd $dir && dvc repro" >&2
