#!/usr/bin/env bash
# buf breaking (FILE rules), read from git so that no registry is needed:
#   1. the working tree's contracts against HEAD's (a change not yet committed);
#   2. every commit in HEAD's first-parent history that changed proto/ against its parent,
#      unless proto/BREAKING.md acknowledges it by its hash.
# A change that would break generated clients so fails in CI before it lands, whatever the
# commit it came in. Run by `make breaking` (which builds buf and build/protodeps first).
set -euo pipefail
cd "$(dirname "$0")/.."

buf=node_modules/.bin/buf
work=build/breaking

# A directory buf can read: buf.yaml, proto/ and the googleapis protos of build/protodeps.
from_git() {
  rm -rf "$2" && mkdir -p "$2/build"
  git archive "$1" buf.yaml proto | tar -x -C "$2"
  cp -r build/protodeps "$2/build/protodeps"
}
from_tree() {
  rm -rf "$1" && mkdir -p "$1/build"
  cp -r buf.yaml proto "$1/"
  cp -r build/protodeps "$1/build/protodeps"
}

from_tree "$work/tree"
from_git HEAD "$work/head"
echo "buf breaking: working tree against HEAD"
"$buf" breaking "$work/tree" --against "$work/head"

checked=0
for commit in $(git rev-list --first-parent HEAD -- proto); do
  parent=$(git rev-parse -q --verify "$commit^" || true)
  if [ -z "$parent" ] || ! git cat-file -e "$parent:proto" 2>/dev/null \
      || ! git cat-file -e "$parent:buf.yaml" 2>/dev/null; then
    continue  # the contracts' first commit: nothing before it to break
  fi
  if grep -q "^- ${commit:0:12}" proto/BREAKING.md; then
    echo "buf breaking: ${commit:0:12} acknowledged in proto/BREAKING.md"
    continue
  fi
  from_git "$commit" "$work/new"
  from_git "$parent" "$work/old"
  "$buf" breaking "$work/new" --against "$work/old" \
    || { echo "buf breaking: commit ${commit:0:12} breaks the contracts of its parent" >&2; exit 1; }
  checked=$((checked + 1))
done
echo "buf breaking: $checked commits that changed proto/ checked against their parents"
