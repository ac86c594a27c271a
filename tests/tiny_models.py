"""Random-initialised tiny models saved to disk, for tests of the generic model path."""

from __future__ import annotations

import torch

CORPUS = ["def f(x):\n    return x + 1\n", "assert f(1) == 2\n", "print('hello world')\n",
          "def g(xs):\n    return [x * 2 for x in xs if x > 0]\n", "Write a function. f([1, 2]) -> 3\n"] * 20


def save_tokenizer(path, corpus=CORPUS, vocab_size=400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(path)
    return fast


def save_model(kind: str, path, vocab: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, eos_token_id=0, pad_token_id=1)
    if kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **common))
    elif kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **common))
    else:
        m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, **common))
    m.save_pretrained(path)


def make_tiny(kind: str, path) -> str:
    tok = save_tokenizer(path)
    save_model(kind, path, len(tok))
    return str(path)
