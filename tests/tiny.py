"""A tiny Llama and a byte-level BPE tokenizer, built from nothing (no hub) for the tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the capital of france is paris and the capital of italy is rome",
    "she unlocked the door with her old brass key and walked into the dark hall",
    "salt and pepper, bread and butter, knife and fork, cup and saucer",
    "once upon a time there was a small village by the sea where fishermen lived",
    "def add(a, b): return a + b  # add two numbers and return the sum",
    "anna: how are you today?\nben: i am fine, thank you. and you?",
    "five things to pack: a tent, a torch, a map, some water and a warm coat",
    "the sun rises in the east and sets in the west every single day",
] * 20


def build_tiny_model(
    folder: Path, *, hidden: int = 256, layers: int = 2, vocab: int = 512, seed: int = 0, pad: bool = True
) -> Path:
    """Save a random-weight LlamaForCausalLM and its tokenizer into ``folder``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"] + (["<pad>"] if pad else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    kwargs = {"pad_token": "<pad>"} if pad else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3 if pad else None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # a random model is nearly uniform; sharpen it so that sampling settings change what it says
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    return folder
