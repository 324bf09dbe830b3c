#!/usr/bin/env bash
# Copies what benchmarks/gpu_check.sh needs and the GPU machine lacks into .bench_assets/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path
from medattack.models.embedded import smollm2_dir
source, target = smollm2_dir(), Path(".bench_assets/smollm2-tokenizer")
target.mkdir(parents=True, exist_ok=True)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
    if (source / name).exists():
        shutil.copy(source / name, target / name)
print(f"copied the tokenizer to {target}")
from medattack.scoring.backends.text_embedders import embedded_minilm_path
source, target = Path(embedded_minilm_path()), Path(".bench_assets/minilm-tokenizer")
target.mkdir(parents=True, exist_ok=True)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (source / name).exists():
        shutil.copy(source / name, target / name)
print(f"copied the MiniLM tokenizer to {target}")
PY
