"""What a model source's weights were, as text: torch-free facts shared by model loading (which
records them) and the report (which states them). Nothing here loads or reads a model."""

from __future__ import annotations

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
