"""llama-cpp-python's OpenAI-compatible server, loading its model as patchbay's embedded model
does (without llama.cpp's extra CPU buffers, which crash on AMX CPUs; see
``patchbay.providers.local.model.without_extra_buffers``).

    python -m tests.support.llama_server --model PATH ...   # the arguments of python -m llama_cpp.server
"""

from __future__ import annotations

import runpy

from patchbay.providers.local.model import without_extra_buffers

if __name__ == "__main__":
    with without_extra_buffers():  # held while the server runs: it loads its model at startup
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
