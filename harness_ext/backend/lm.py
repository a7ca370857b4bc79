"""The lm-eval model backend ``hf-quant``: an ``HFLM`` that builds the quantized model itself.

lm-eval 0.4.13's own bitsandbytes path is broken on transformers 5 (``load_in_4bit`` reaches the
model constructor), so this backend loads the model with a ``BitsAndBytesConfig`` from a
:class:`~harness_ext.quant.Scheme` and hands the built model to ``HFLM``. It overrides
``generate_until`` only, to

- sample every row by its own settings and random stream (:mod:`harness_ext.sampling`), so outputs
  do not depend on batching, and temperature 0 always means greedy;
- batch rows of different sampling settings together (grid batching) and serve several
  ``max_gen_toks`` values from one generation, truncated;
- prefill each distinct prompt once for all its rows; on CUDA, decode into a preallocated (static)
  KV cache and size each call from free memory, halving it on out-of-memory;
- instrument every ``generate`` call (:class:`~harness_ext.measure.GenerateStats`).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from pydantic import ValidationError
from tqdm import tqdm
from transformers import (
    CompileConfig,
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
)

from harness_ext import models as sources
from harness_ext.errors import ModelLoadError, SpecError, UnsupportedSchemeError
from harness_ext.measure import (
    Clock,
    GenerateStats,
    StepTimer,
    cuda_devices,
    model_devices,
    summarize_marks,
    synchronize,
    track_peak_memory,
    weight_bytes_by_device,
)
from harness_ext.quant import BUILTIN_SCHEMES, Scheme, check_supported, from_pretrained_kwargs
from harness_ext.sampling import RowParams, RowSampler, SamplingError, check_sampling, row_key

log = logging.getLogger(__name__)

#: gen_kwargs that only change how a row samples: rows differing in these can share a batch.
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_gen_toks", "seed")
QUANT_LAYER_TYPES = ("Linear4bit", "Linear8bitLt")


class _OncePerMessage(logging.Filter):
    """Let a repeated log message through once (bitsandbytes warns on every int8 forward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_OncePerMessage())


class Generation(str):
    """A generated text that also knows how it ended: ``new_tokens``, ``hit_cap``, ``finish``."""

    new_tokens: int
    hit_cap: bool
    finish: str

    def __new__(cls, text: str, new_tokens: int, hit_cap: bool, finish: str) -> Generation:
        obj = super().__new__(cls, text)
        obj.new_tokens, obj.hit_cap, obj.finish = new_tokens, hit_cap, finish
        return obj


@dataclass
class LoadInfo:
    """How a (model, scheme) was loaded: time, memory, and proof of what the layers became."""

    load_s: float
    weight_bytes: int
    load_peak_bytes: int | None
    load_peak_kind: str
    num_parameters: int
    layer_types: dict[str, int]
    dtypes: dict[str, int]
    device: str
    source: dict[str, Any]
    note: str | None
    scheme: dict[str, Any]
    model_type: str | None = None
    original_generation_config: dict[str, Any] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)  # where the weights are, in the order layers run
    weight_bytes_by_device: dict[str, int] = field(default_factory=dict)
    load_peak_by_device: dict[str, int] | None = None  # CUDA: each device's own peak while loading


def scheme_from_args(quant: str | Scheme, **fields: Any) -> Scheme:
    """A scheme from ``quant=<built-in name>`` plus any scheme fields given as model args."""
    if isinstance(quant, Scheme):
        return quant
    base = BUILTIN_SCHEMES.get(quant)
    if base is None:
        raise SpecError(f"unknown quant={quant!r}: built-ins are {', '.join(BUILTIN_SCHEMES)}")
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return base
    data = base.model_dump(exclude_none=True) | given
    try:
        return Scheme.model_validate(data)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"quant={quant!r} with {given}: {msg}") from None


def _count(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    layers: dict[str, int] = defaultdict(int)
    for m in model.modules():
        name = type(m).__name__
        if name in QUANT_LAYER_TYPES or name == "Linear":
            layers[name] += 1
    dtypes: dict[str, int] = defaultdict(int)
    for p in model.parameters():
        dtypes[str(p.dtype).removeprefix("torch.")] += p.numel()
    return dict(layers), dict(dtypes)


def load_model(
    pretrained: str | None,
    scheme: Scheme,
    device: str,
    *,
    model_dtype: str = "float32",
    revision: str | None = None,
    gguf_file: str | None = None,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    shape: dict[str, Any] | None = None,
    device_map: str | None = None,
) -> tuple[transformers.PreTrainedModel, Any, LoadInfo]:
    """Load ``pretrained`` (or build ``shape`` with random weights) quantized by ``scheme`` on
    ``device`` — or, with ``device_map="auto"``, spread over every GPU this process sees; measure
    load time and memory."""
    scheme = scheme.resolve(model_dtype)
    check_supported(scheme, device)  # before any weights load
    if device_map not in (None, "auto"):
        raise SpecError(f"device_map must be 'auto' or unset, not {device_map!r}")
    if shape is not None:
        if device_map == "auto" and scheme.quantized:
            raise SpecError(
                f"scheme {scheme.name!r}: a shape spread over several GPUs is built unquantized only "
                "(bitsandbytes quantizes while a checkpoint loads): give this model num_gpus: 1"
            )
        return _build_shape(shape, scheme, device, spread=device_map == "auto")
    if pretrained is None:
        raise ModelLoadError("a model needs `pretrained` (weights) or `shape` (config fields)")
    source = sources.resolve(pretrained, gguf_file=gguf_file, revision=revision, tokenizer=tokenizer)
    try:
        config = transformers.AutoConfig.from_pretrained(
            source.path, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load the config of {pretrained!r}: {_one_line(e)}") from e
    if getattr(config, "quantization_config", None):
        raise ModelLoadError(
            f"{pretrained!r} is already quantized ({config.quantization_config.get('quant_method', '?')}); "
            "harness_ext quantizes on load: point it at the unquantized checkpoint"
        )
    kwargs = from_pretrained_kwargs(scheme)
    if device_map == "auto":
        kwargs["device_map"] = "auto"  # accelerate places layers over the visible GPUs
    elif scheme.quantized:
        kwargs["device_map"] = {"": device}  # bitsandbytes quantizes as the weights land on the device
    try:
        tok = transformers.AutoTokenizer.from_pretrained(
            source.tokenizer or source.path, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer of {pretrained!r}: {_one_line(e)}") from e
    load_devices = _load_devices(device, device_map)
    with track_peak_memory(load_devices) as peak:
        t0 = time.perf_counter()
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source.path, revision=source.revision, trust_remote_code=trust_remote_code, **kwargs
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load {pretrained!r} as {scheme.name}: {_one_line(e)}") from e
        if not scheme.quantized and device_map is None:
            model.to(device)
        synchronize(cuda_devices(load_devices))
        load_s = time.perf_counter() - t0
    return model, tok, _finish_load(model, config, scheme, device, load_s, peak, source.origin, source.note)


def _load_devices(device: str, device_map: str | None) -> list[torch.device]:
    """The devices a load may touch: every visible GPU with ``device_map="auto"``, else ``device``."""
    if device_map == "auto" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(device)]


def _build_shape(shape: dict[str, Any], scheme: Scheme, device: str, spread: bool = False) -> tuple[Any, Any, LoadInfo]:
    config = sources.shape_config(shape)
    tok = sources.placeholder_tokenizer(getattr(config, "vocab_size", 4))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    load_devices = _load_devices(device, "auto" if spread else None)
    with track_peak_memory(load_devices) as peak:
        t0 = time.perf_counter()
        if spread:  # device_map="auto": over every GPU this process sees (a Ray task's)
            model = sources.spread_random_model(config, from_pretrained_kwargs(scheme)["dtype"])
        else:
            model = sources.random_model(config, from_pretrained_kwargs(scheme), device)
        synchronize(cuda_devices(load_devices))
        load_s = time.perf_counter() - t0
    return model, tok, _finish_load(model, config, scheme, device, load_s, peak, {"shape": shape}, sources.SHAPE_NOTE)


def _finish_load(
    model: Any,
    config: Any,
    scheme: Scheme,
    device: str,
    load_s: float,
    peak: Any,
    origin: dict[str, Any],
    note: str | None,
) -> LoadInfo:
    """Neutralise the model's own sampling defaults and describe what was loaded."""
    model.eval()
    original_gc = model.generation_config.to_diff_dict() if model.generation_config else {}
    # a model's own sampling defaults (temperature, repetition_penalty, ...) must not leak into cells
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    layers, dtypes = _count(model)
    return LoadInfo(
        load_s=load_s,
        weight_bytes=int(model.get_memory_footprint()),
        load_peak_bytes=peak.bytes,
        load_peak_kind=peak.kind,
        num_parameters=sum(p.numel() for p in model.parameters()),
        layer_types=layers,
        dtypes=dtypes,
        device=str(device),
        source=origin,
        note=note,
        scheme=scheme.model_dump(mode="json"),
        model_type=getattr(config, "model_type", None),
        original_generation_config={k: v for k, v in original_gc.items() if isinstance(v, (int, float, str, bool))},
        devices=[str(d) for d in model_devices(model)],
        weight_bytes_by_device=weight_bytes_by_device(model),
        load_peak_by_device=peak.by_device,
    )


# transformers renamed `past_key_values` to `cache` during 5.x (5.17 takes the old name, 5.24 warns on it)
_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters else "past_key_values"
)


def check_mode(mode: str, scheme: dict[str, Any], device: str) -> str:
    """Refuse, in one line, a generation mode a scheme cannot run; return the mode."""
    if mode not in ("eager", "compiled"):
        raise SpecError(f"mode must be eager or compiled, not {mode!r}")
    if mode == "eager":
        return mode
    quant = scheme.get("quant")
    if quant == "int8":
        raise UnsupportedSchemeError(
            f"scheme {scheme.get('name')!r}: int8 (LLM.int8) cannot run compiled: torch.compile had not finished "
            "compiling it after 4.5 minutes on an H100 (bitsandbytes 0.50.2); use mode eager"
        )
    if quant in ("nf4", "fp4") and torch.device(device).type != "cuda":
        raise UnsupportedSchemeError(
            f"scheme {scheme.get('name')!r}: compiled 4-bit runs on CUDA only (torch.compile fails on bitsandbytes' "
            "CPU 4-bit kernels); use mode eager on the CPU"
        )
    return mode


def compile_description(scheme: dict[str, Any], config: Any) -> str:
    """What the compiled mode actually ran, for the records."""
    if scheme.get("quant") == "none":
        return (
            f"static KV cache; transformers compiles the forward itself (CompileConfig fullgraph={config.fullgraph}, "
            f"mode={config.mode})"
        )
    return "static KV cache; model.forward = torch.compile(model.forward, mode='default') (bitsandbytes)"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class RowStops(StoppingCriteria):
    """Per-row end of generation: EOS, a stop string, or the row's own cap; records when and why."""

    def __init__(
        self,
        tokenizer: Any,
        stops: Sequence[str],
        eos_ids: Sequence[int],
        caps: Sequence[int],
        prompt_len: int,
        device: torch.device,
    ):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.lookback = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops), default=0) + 2
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
        self.caps = torch.tensor(caps, dtype=torch.long, device=device)
        self.prompt_len = prompt_len
        self.done_at = [0] * len(caps)  # generated tokens when the row ended (0 = not yet)
        self.reason = [""] * len(caps)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        step = input_ids.shape[1] - self.prompt_len
        open_rows = [i for i, d in enumerate(self.done_at) if d == 0]
        if open_rows:
            last = input_ids[:, -1]
            eos_hit = torch.isin(last, self.eos).tolist() if self.eos.numel() else [False] * len(self.done_at)
            cap_hit = (self.caps <= step).tolist()
            need_text = [i for i in open_rows if not eos_hit[i]] if self.stops else []
            stop_hit: dict[int, bool] = {}
            if need_text:
                tails = input_ids[need_text, self.prompt_len :][:, -self.lookback :]
                for i, text in zip(need_text, self.tokenizer.batch_decode(tails), strict=True):
                    stop_hit[i] = any(s in text for s in self.stops)
            for i in open_rows:
                reason = "eos" if eos_hit[i] else "stop" if stop_hit.get(i) else "cap" if cap_hit[i] else ""
                if reason:
                    self.done_at[i], self.reason[i] = step, reason
        return torch.tensor([d > 0 for d in self.done_at], dtype=torch.bool, device=input_ids.device)


@dataclass
class RowResult:
    """One row's generated token ids (real ones only) and how the row ended."""

    tokens: list[int]
    finish: str  # eos | stop | cap


@dataclass
class _Job:
    """A unique generation: requests that differ only in ``max_gen_toks`` share one."""

    context: str
    params: RowParams
    cap: int
    members: list[tuple[int, int]] = field(default_factory=list)  # (request index, its own cap)


@register_model("hf-quant")
class HFQuantLM(HFLM):
    """``hf`` with the model built by harness_ext: ``--model_args pretrained=...,quant=nf4[,fields]``.

    Model args: ``quant`` (a built-in scheme name; default fp32) with optional scheme fields
    ``dtype``, ``compute_dtype``, ``double_quant``, ``int8_threshold``; ``model_dtype`` (dtype of
    the unquantized layers when the scheme leaves it open; default float32); ``gguf_file``;
    ``grid_batching`` (default true); ``seed`` (default stream seed when a request has none).
    """

    def __init__(
        self,
        pretrained: str | transformers.PreTrainedModel | None = None,
        quant: str | Scheme = "fp32",
        dtype: str | None = None,
        compute_dtype: str | None = None,
        double_quant: bool | None = None,
        int8_threshold: float | None = None,
        model_dtype: str = "float32",
        gguf_file: str | None = None,
        revision: str | None = None,
        tokenizer: Any = None,
        trust_remote_code: bool = False,
        device: str | None = "auto",
        batch_size: int | str = 8,
        grid_batching: bool = True,
        seed: int = 0,
        mode: str = "eager",
        kv_cache: str = "auto",
        shape: dict[str, Any] | None = None,
        device_map: str | None = None,
        load_info: LoadInfo | None = None,
        **kwargs: Any,
    ) -> None:
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(pretrained, str) or shape is not None:
            scheme = scheme_from_args(
                quant,
                dtype=dtype,
                compute_dtype=compute_dtype,
                double_quant=double_quant or None,
                int8_threshold=int8_threshold,
            )
            model, tok, load_info = load_model(
                pretrained,
                scheme,
                device,
                model_dtype=model_dtype,
                revision=revision,
                gguf_file=gguf_file,
                tokenizer=tokenizer if isinstance(tokenizer, str) else None,
                trust_remote_code=trust_remote_code,
                shape=shape,
                device_map=device_map,
            )
            tokenizer = tok if not tokenizer or isinstance(tokenizer, str) else tokenizer
            self.model_name = pretrained or f"shape:{shape.get('model_type')}"
        else:
            model = pretrained
            self.model_name = getattr(model.config, "_name_or_path", type(model).__name__)
        if str(batch_size).startswith("auto"):
            raise SpecError(
                "hf-quant takes a fixed batch_size (rows per generate call); it backs off by itself on CUDA OOM"
            )
        super().__init__(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=int(batch_size),
            device=device,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
        self.load_info = load_info
        self.model_devices = model_devices(self.model)  # what every measurement syncs and reads
        self.mode = check_mode(mode, self._scheme_fields(), str(self.device))
        if kv_cache not in ("auto", "dynamic", "static"):
            raise SpecError(f"kv_cache must be auto, dynamic or static, not {kv_cache!r}")
        # auto: static (preallocated) on CUDA, where DynamicCache's per-step torch.cat of the whole cache
        # dominates large grid-batched passes; dynamic on the CPU (`bench/grid_batching.py --kv-cache` times both)
        self.kv_cache = kv_cache if kv_cache != "auto" else ("static" if self.device.type == "cuda" else "dynamic")
        self.compiled: dict[str, Any] = {}  # how the compiled mode was set up, for the records
        self.grid_batching = bool(grid_batching)
        self.default_seed = int(seed)
        self.calls: list[GenerateStats] = []
        self.show_progress = True
        self.share_prefill = True
        self.max_rows: int | None = None  # rows that fitted when a CUDA out-of-memory split a call

    # -- lm-eval metadata: no hub look-ups ------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(self._model.dtype),
            "model_name": self.model_name,
        }
        if self.load_info is not None:
            info["hf_quant"] = {"scheme": self.load_info.scheme, "weight_bytes": self.load_info.weight_bytes}
        return info

    def pop_calls(self) -> list[GenerateStats]:
        """Return and forget the stats of the generate calls made since the last pop."""
        calls, self.calls = self.calls, []
        return calls

    # -- generation ----------------------------------------------------------------------------
    def _scheme_fields(self) -> dict[str, Any]:
        """The resolved scheme this LM was loaded with (a pre-built model counts as unquantized)."""
        return self.load_info.scheme if self.load_info is not None else {"quant": "none", "name": "model"}

    def generate_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Sequence[RowParams],
        caps: Sequence[int],
        stops: Sequence[str] = (),
        min_new_tokens: int = 0,
        mode: str | None = None,
        kv_cache: str | None = None,
    ) -> list[RowResult]:
        """One instrumented ``generate`` over a left-padded batch; each row samples by its own params.

        On CUDA out-of-memory the batch is split in half and retried (outputs do not depend on the
        batch, so nothing changes but the time), and later calls plan no more rows than fitted.
        """
        mode = check_mode(mode or self.mode, self._scheme_fields(), str(self.device))
        kv_cache = kv_cache or self.kv_cache
        try:
            with self._mode(mode):
                return self._generate_rows(
                    input_ids, attention_mask, params, caps, stops, min_new_tokens, mode, kv_cache
                )
        except torch.OutOfMemoryError:
            if input_ids.shape[0] == 1:
                raise
            gc.collect()
            torch.cuda.empty_cache()
            half = input_ids.shape[0] // 2
            self.max_rows = min(self.max_rows or half, half)
            log.warning(
                "CUDA out of memory at %d rows; retrying as %d + %d",
                input_ids.shape[0],
                half,
                input_ids.shape[0] - half,
            )
            rest = (stops, min_new_tokens, mode, kv_cache)
            first = self.generate_rows(input_ids[:half], attention_mask[:half], params[:half], caps[:half], *rest)
            return first + self.generate_rows(
                input_ids[half:], attention_mask[half:], params[half:], caps[half:], *rest
            )

    def rows_per_call(self, tokens: int) -> int:
        """Rows of one generate call whose sequences reach ``tokens`` tokens: the batch size; on CUDA
        no more than their KV cache and logits fit in free memory (estimated from the model's config,
        with a 10% margin), and no more than an earlier out-of-memory allowed."""
        rows = min(self.batch_size, self.max_rows or self.batch_size)
        if self.device.type != "cuda":
            return rows
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)  # torch's cache
        config = self.model.config.get_text_config(decoder=True)
        per_row = kv_bytes_per_token(config, self.model.dtype) * tokens + 6 * 4 * config.vocab_size
        return max(1, min(rows, int(0.9 * free // per_row)))

    @contextlib.contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        """Compiled 4-bit models: swap in a ``torch.compile``d forward for the call (transformers never
        compiles bitsandbytes models itself); unquantized models are compiled by transformers."""
        if mode != "compiled" or self._scheme_fields().get("quant") == "none":
            yield
            return
        if "forward" not in self.compiled:
            self.compiled["forward"] = torch.compile(self.model.forward, mode="default")
        eager = self.model.forward
        self.model.forward = self.compiled["forward"]
        try:
            yield
        finally:
            self.model.forward = eager

    def _generate_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Sequence[RowParams],
        caps: Sequence[int],
        stops: Sequence[str],
        min_new_tokens: int,
        mode: str = "eager",
        kv_cache: str = "dynamic",
    ) -> list[RowResult]:
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        prompt_len = input_ids.shape[1]
        starts = prompt_len - attention_mask.sum(dim=1)
        eos_ids = self._eos_ids()
        stopper = RowStops(self.tokenizer, stops, eos_ids, caps, prompt_len, device)
        clock = Clock(self.model_devices)
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(caps),
            min_new_tokens=min_new_tokens or None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos_ids or None,
            use_cache=True,
        )
        if mode == "compiled":
            config.cache_implementation = "static"
            config.compile_config = CompileConfig()  # transformers compiles unquantized models (CUDA graphs)
            config.compile_config._compile_all_devices = torch.device(device).type != "cuda" or None
            self.compiled.setdefault("how", compile_description(self._scheme_fields(), config.compile_config))
        else:
            config.disable_compile = True  # a static cache must not make transformers compile an eager pass
        processors = LogitsProcessorList([StepTimer(clock), RowSampler(params, prompt_len, starts, device)])
        with track_peak_memory(self.model_devices) as peak, torch.no_grad():
            clock.mark()
            cache = (
                self._prefill_cache(input_ids, attention_mask, prompt_len + max(caps), kv_cache)
                if mode == "eager"
                else None
            )
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper]),
                **({_CACHE_ARG: cache} if cache is not None else {}),
            )
            clock.mark()
        if (
            mode == "compiled"
            and self._scheme_fields().get("quant") == "none"
            and not hasattr(self.model, "_compiled_call")
        ):
            raise UnsupportedSchemeError(  # never report eager timings as compiled ones
                f"transformers did not compile {self.model_name} for generation (no compiled forward after generate)"
            )
        marks = clock.elapsed_ms()
        ttft, steps = summarize_marks(marks[:-1])
        gen = out[:, prompt_len:].tolist()
        results = []
        for i, row in enumerate(gen):
            n = stopper.done_at[i] or len(row)
            results.append(RowResult(row[:n], stopper.reason[i] or "cap"))
        self.calls.append(
            GenerateStats(
                rows=len(params),
                prompt_tokens=int(attention_mask.sum()),
                padded_prompt_len=prompt_len,
                new_tokens=sum(len(r.tokens) for r in results),
                steps=len(steps),
                wall_ms=marks[-1] - marks[0],
                ttft_ms=ttft,
                decode_ms_per_step=_median(steps),
                decode_ms_per_step_mean=sum(steps) / len(steps) if steps else None,
                peak_memory_bytes=peak.bytes,
                peak_memory_kind=peak.kind,
                device=str(device),
                kv_cache="static" if mode == "compiled" else kv_cache,
                peak_memory_by_device=peak.by_device,
                step_ms=steps,
            )
        )
        return results

    def _prefill_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int, kv_cache: str) -> Any:
        """The KV cache an eager ``generate`` starts from, or None to let it prefill a DynamicCache.

        Rows of different grid points share their prompt: each distinct prompt is prefilled once and
        every row gets a copy of its cache (without this a 20-point grid prefills every prompt 20
        times). The copy covers all but the last prompt token, which ``generate`` then feeds as its
        first step. With ``kv_cache="static"`` the cache is preallocated to ``max_len`` tokens, so
        decoding writes in place instead of re-allocating the whole cache every step.
        """
        shared = self._shared_prefill(input_ids, attention_mask)
        if kv_cache == "dynamic":
            if shared is None:
                return None
            cache, index = shared
            cache.reorder_cache(index)
            return cache
        static = StaticCache(config=self.model.config, max_cache_len=max_len)
        if shared is not None:
            cache, index = shared
            for i, layer in enumerate(cache.layers):
                static.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), i)
                layer.keys = layer.values = None  # free the distinct prompts' copy layer by layer
        return static

    def _shared_prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[DynamicCache, torch.Tensor] | None:
        """Prefill each distinct prompt once (all but its last token): the cache of the distinct
        prompts and, per row, the index of its prompt; None when every row's prompt is different."""
        if not self.share_prefill or input_ids.shape[1] < 2:
            return None
        first: dict[tuple[int, ...], int] = {}
        index = [first.setdefault(tuple(row), len(first)) for row in input_ids.tolist()]
        if len(first) == len(index):
            return None
        rows = torch.tensor([index.index(u) for u in range(len(first))], device=input_ids.device)
        ids, mask = input_ids[rows, :-1], attention_mask[rows, :-1]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.cache if _CACHE_ARG == "cache" else out.past_key_values
        return cache, torch.tensor(index, device=input_ids.device)

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted(set(ids))

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's entry point: group, deduplicate, batch, generate, truncate, post-process."""
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        occurrences: dict[int, int] = defaultdict(int)
        groups: dict[str, dict[tuple, _Job]] = defaultdict(dict)
        group_until: dict[str, list[str]] = {}
        for idx, inst in enumerate(requests):
            context, gen_kwargs = inst.args
            sample_index = occurrences[id(inst)]  # lm-eval repeats a request as the same object
            occurrences[id(inst)] += 1
            kw = dict(gen_kwargs)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos_text)
            params, cap = self._row_params(kw, context, sample_index)
            rest = {k: v for k, v in kw.items() if k not in SAMPLING_KEYS and k not in ("max_new_tokens", "max_length")}
            if rest:
                raise SpecError(f"hf-quant does not support generation kwargs {sorted(rest)}")
            group = repr(until) if self.grid_batching else repr((until, sorted(gen_kwargs.items(), key=str)))
            group_until[group] = until
            dedup = (context, params)
            job = groups[group].setdefault(dedup, _Job(context, params, cap))
            job.cap = max(job.cap, cap)
            job.members.append((idx, cap))
        out: list[str | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests),
            disable=disable_tqdm or not self.show_progress or self.rank != 0,
            desc="hf-quant generate",
        )
        for group, jobs in groups.items():
            until = group_until[group]
            lengths = {id(j): len(self.tok_encode(j.context)) for j in jobs.values()}
            ordered = sorted(jobs.values(), key=lambda j: -lengths[id(j)])  # longest first
            start = 0
            while start < len(ordered):
                longest = min(lengths[id(ordered[start])], self.max_length)
                n = self.rows_per_call(longest + max(j.cap for j in ordered[start : start + self.batch_size]))
                chunk = ordered[start : start + n]
                start += n
                cap = max(j.cap for j in chunk)
                max_ctx = self.max_length - cap
                if max_ctx <= 0:
                    raise SpecError(
                        f"max_new_tokens={cap} leaves no room for a prompt (model max length {self.max_length})"
                    )
                ids, mask = self.tok_batch_encode(
                    [j.context for j in chunk], left_truncate_len=max_ctx, truncation=self.truncation
                )
                rows = self.generate_rows(ids, mask, [j.params for j in chunk], [j.cap for j in chunk], until)
                for job, row in zip(chunk, rows, strict=True):
                    for idx, own_cap in job.members:
                        out[idx] = self._finish(row, own_cap, until, requests[idx])
                        pbar.update(1)
        pbar.close()
        return [o if o is not None else "" for o in out]

    def _row_params(self, kw: dict[str, Any], context: str, sample_index: int) -> tuple[RowParams, int]:
        """A request's sampling settings as :class:`RowParams`; invalid values are refused, never
        replaced by a default (``top_p=0`` must not become "off")."""
        cap = int(kw.get("max_gen_toks", kw.get("max_new_tokens", self.max_gen_toks)))
        temperature = _given(kw, "temperature", 0.0)
        top_k = int(_given(kw, "top_k", 0))
        top_p = _given(kw, "top_p", 1.0)
        penalty = _given(kw, "repetition_penalty", 1.0)
        check_sampling(temperature, top_k, top_p, penalty)
        if kw.get("do_sample") is False:
            temperature = 0.0  # do_sample=False is greedy whatever the temperature
        top_k = top_k or None  # top_k=0 (or none given) is "off", as in transformers
        if temperature == 0.0:  # greedy: the stream and the other warpers cannot matter
            return RowParams(0.0, None, 1.0, penalty, 0), cap
        seed = int(kw.get("seed", self.default_seed))
        return RowParams(temperature, top_k, top_p, penalty, row_key(seed, context, sample_index)), cap

    def _finish(self, row: RowResult, cap: int, until: list[str], inst: Instance) -> Generation:
        tokens = row.tokens[:cap]
        finish = row.finish if len(row.tokens) <= cap else "cap"
        text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
        self.cache_hook.add_partial("generate_until", inst.args, text)
        return Generation(text, len(tokens), finish == "cap", finish)


def _given(kw: dict[str, Any], name: str, default: float) -> float:
    """``kw[name]`` as a float, ``default`` only where it is absent or None (never where it is 0)."""
    value = kw.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name} must be a number, not {value!r}") from None


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes one token of one row takes: keys and values of every layer's KV heads."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
