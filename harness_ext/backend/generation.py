"""Row generation: one instrumented ``generate`` call over a batch of rows, each sampled by its own
point and stream (:mod:`harness_ext.backend.sampler`) and ended by its own stop (:class:`RowStops`);
out-of-memory splitting; eager or compiled mode.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from harness_ext.backend.kvcache import CACHE_ARG, kv_bytes_by_device, prefill_cache
from harness_ext.backend.measure import Clock, GenerateStats, StepTimer, summarize_marks, track_peak_memory
from harness_ext.backend.sampler import Row, RowSampler
from harness_ext.errors import SpecError, UnsupportedSchemeError

log = logging.getLogger(__name__)


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


class RowGeneration:
    """The generation half of :class:`~harness_ext.backend.lm.HFQuantLM` (a mixin over lm-eval's ``HFLM``):
    batches of rows in, token ids and per-call measurements out."""

    model: Any
    tokenizer: Any
    device: torch.device
    model_devices: list[torch.device]
    model_name: str
    load_info: Any
    batch_size: int
    mode: str
    kv_cache: str
    compiled: dict[str, Any]
    calls: list[GenerateStats]
    share_prefill: bool
    max_rows: int | None

    def _scheme_fields(self) -> dict[str, Any]:
        """The resolved scheme this LM was loaded with (a pre-built model counts as unquantized)."""
        return self.load_info.scheme if self.load_info is not None else {"quant": "none", "name": "model"}

    def generate_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: Sequence[Row],
        caps: Sequence[int],
        stops: Sequence[str] = (),
        min_new_tokens: int = 0,
        mode: str | None = None,
        kv_cache: str | None = None,
    ) -> list[RowResult]:
        """One instrumented ``generate`` over a left-padded batch; each row samples by its own point and stream.

        On CUDA out-of-memory the batch is split in half and retried (outputs do not depend on the
        batch, so nothing changes but the time), and later calls plan no more rows than fitted.
        """
        mode = check_mode(mode or self.mode, self._scheme_fields(), str(self.device))
        kv_cache = kv_cache or self.kv_cache
        try:
            with self._mode(mode):
                return self._generate_rows(input_ids, attention_mask, rows, caps, stops, min_new_tokens, mode, kv_cache)
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
            first = self.generate_rows(input_ids[:half], attention_mask[:half], rows[:half], caps[:half], *rest)
            return first + self.generate_rows(input_ids[half:], attention_mask[half:], rows[half:], caps[half:], *rest)

    def rows_per_call(self, tokens: int) -> int:
        """Rows of one generate call whose sequences reach ``tokens`` tokens: the batch size; on CUDA
        no more than their KV cache and logits fit in free memory on every GPU the model is on (each
        layer's cache beside its layer, the logits beside the output layer; estimated from the
        model's config, with a 10% margin), and no more than an earlier out-of-memory allowed."""
        rows = min(self.batch_size, self.max_rows or self.batch_size)
        if self.device.type != "cuda":
            return rows
        config = self.model.config.get_text_config(decoder=True)
        per_row = {
            d: b * tokens for d, b in kv_bytes_by_device(self.model, config, self.model.dtype, self.device).items()
        }
        head = getattr(self.model.get_output_embeddings(), "weight", None)
        logits_device = head.device if head is not None and head.device.type == "cuda" else self.device
        per_row[logits_device] = per_row.get(logits_device, 0) + 6 * 4 * config.vocab_size
        for device, need in per_row.items():
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # torch's cache
                rows = min(rows, int(0.9 * free // need))
        return max(1, rows)

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
        rows: Sequence[Row],
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
        config = self._generation_config(max(caps), min_new_tokens, eos_ids, mode)
        processors = LogitsProcessorList([StepTimer(clock), RowSampler(rows, prompt_len, starts, device)])
        with track_peak_memory(self.model_devices) as peak, torch.no_grad():
            clock.mark()
            cache = (
                prefill_cache(
                    self.model, input_ids, attention_mask, prompt_len + max(caps), kv_cache, self.share_prefill
                )
                if mode == "eager"
                else None
            )
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper]),
                **({CACHE_ARG: cache} if cache is not None else {}),
            )
            clock.mark()
        self._check_compiled(mode)
        marks = clock.elapsed_ms()
        ttft, steps = summarize_marks(marks[:-1])
        gen = out[:, prompt_len:].tolist()
        results = []
        for i, row in enumerate(gen):
            n = stopper.done_at[i] or len(row)
            results.append(RowResult(row[:n], stopper.reason[i] or "cap"))
        self.calls.append(
            GenerateStats(
                rows=len(rows),
                prompt_tokens=int(attention_mask.sum()),
                padded_prompt_len=prompt_len,
                new_tokens=sum(len(r.tokens) for r in results),
                steps=len(steps),
                wall_ms=marks[-1] - marks[0],
                ttft_ms=ttft,
                decode_ms_per_step=statistics.median(steps) if steps else None,
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

    def _generation_config(self, max_new_tokens: int, min_new_tokens: int, eos_ids: list[int], mode: str) -> Any:
        """``generate``'s settings: greedy over the sampler's one finite logit; a static, compiled cache
        in compiled mode, no compilation at all in eager mode."""
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos_ids or None,
            use_cache=True,
        )
        if mode == "compiled":
            config.cache_implementation = "static"
            config.compile_config = CompileConfig()  # transformers compiles unquantized models (CUDA graphs)
            config.compile_config._compile_all_devices = self.device.type != "cuda" or None
            self.compiled.setdefault("how", compile_description(self._scheme_fields(), config.compile_config))
        else:
            config.disable_compile = True  # a static cache must not make transformers compile an eager pass
        return config

    def _check_compiled(self, mode: str) -> None:
        """Never report eager timings as compiled ones: an unquantized model must have been compiled."""
        if (
            mode == "compiled"
            and self._scheme_fields().get("quant") == "none"
            and not hasattr(self.model, "_compiled_call")
        ):
            raise UnsupportedSchemeError(
                f"transformers did not compile {self.model_name} for generation (no compiled forward after generate)"
            )

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted(set(ids))
