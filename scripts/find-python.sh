#!/usr/bin/env bash
# Prints the path of a Python interpreter of the given minor version (e.g. 3.8), looking in
# pyenv's versions (the CI image builds them there), then on PATH. Installs nothing.
set -euo pipefail
want="${1:?usage: find-python.sh 3.X}"
roots=()
if command -v pyenv >/dev/null 2>&1; then
  roots+=("$(pyenv root)")
fi
roots+=("${PYENV_ROOT:-}" "$HOME/.pyenv")
for root in "${roots[@]}"; do
  [ -n "$root" ] && [ -d "$root/versions" ] || continue
  # Highest patch release first: 3.8.18 before 3.8.9.
  for dir in $(ls -d "$root/versions/$want".* 2>/dev/null | sort -t. -k3,3nr); do
    if [ -x "$dir/bin/python$want" ]; then
      echo "$dir/bin/python$want"
      exit 0
    fi
  done
done
if command -v "python$want" >/dev/null 2>&1; then
  command -v "python$want"
  exit 0
fi
echo "edgecut: no Python $want found (looked in the versions folder of pyenv root(s) $(printf "%s\n" "${roots[@]}" | sort -u | tr "\n" " "), and for" \
     "python$want on PATH). The device-side suite runs under Python $want; build it with" \
     "'pyenv install $want' or install python$want from your distribution." >&2
exit 1
