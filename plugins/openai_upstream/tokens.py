"""Counting tokens for an upstream that sends no ``usage``: with its configured tokenizer (the
vocabulary of a GGUF file, loaded without weights, a few MB once per process), else about four
bytes a token (the usual figure for English with BPE vocabularies)."""
import functools
import logging
import threading

logger = logging.getLogger(__name__)
_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _vocab(path):
    try:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only, params.n_gpu_layers = True, 0
        return LlamaModel(path_model=path, params=params, verbose=False)
    except Exception as exc:
        logger.warning("upstream tokenizer %s cannot be read (%s): counting about 4 bytes a token", path, exc)
        return None


def counter(path):
    """A function text -> tokens."""
    vocab = None
    if path:
        with _lock:
            vocab = _vocab(path)
    if vocab is None:
        return lambda text: (len(text.encode("utf-8")) + 3) // 4 if text else 0
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0
