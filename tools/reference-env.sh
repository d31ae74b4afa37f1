#!/usr/bin/env bash
# Creates (once) the Python reference environment used to make fixtures and to run the
# side-by-side benchmarks: torch 2.11.0, torchvision 0.26.0, transformers 5.24.0 (the version
# the fixtures are made with; a venv with another version gets reinstalled), pandas, pyarrow,
# mathruler 0.1.0 (QoQ-Med's reward imports its extract_boxed_content; its wheel does not
# declare pylatexenc, which mathruler.grader imports, so that is listed too).
# About 5 GB (torch pulls its CUDA libraries). Prints the path of its python.
# Location: ${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}/reference-venv
set -euo pipefail
cache=${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}
venv="$cache/reference-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import transformers, torchvision, pyarrow, pandas, mathruler.grader, sklearn; assert transformers.__version__ == '5.24.0', transformers.__version__" 2>/dev/null; then
    echo "reference-env: installing into $venv (one time, ~5 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.11.0 torchvision==0.26.0 transformers==5.24.0 pillow numpy pyarrow pandas safetensors tensorboard scikit-learn mathruler==0.1.0 pylatexenc >&2
fi
echo "$venv/bin/python"
