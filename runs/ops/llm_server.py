"""llama.cpp's OpenAI-compatible server (llama_cpp.server) as the launcher runs it for `up --local-llm`.

Run by .venv-llm's Python (it imports nothing from the project):

    .venv-llm/bin/python runs/ops/llm_server.py --model FILE.gguf --n_ctx 8192 --n_threads N [llama_cpp.server options]

The one difference from `python -m llama_cpp.server`: the weights stay in llama.cpp's plain CPU buffers
(model parameter use_extra_bufts off) unless BILEVEL_LLM_REPACK=1. The extra buffer types repack weights
for special kernels, among them Intel AMX tiles; pip compiles llama.cpp for the build machine's CPU, and on
a virtual machine whose CPU reports AMX the first request died with a general-protection fault in
ldtilecfg (measured, llama-cpp-python 0.3.36). Plain buffers use the AVX2/AVX-512 kernels, which work
wherever the build ran.
"""

from __future__ import annotations

import os
import runpy
from typing import Any


def plain_buffers() -> None:
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    # llama_cpp.llama.Llama reads it through the llama_cpp module it imported (the same object).
    llama_cpp.llama_model_default_params = params
    llama_cpp.llama.llama_cpp.llama_model_default_params = params


if __name__ == "__main__":
    if os.environ.get("BILEVEL_LLM_REPACK") != "1":
        plain_buffers()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
