"""The lm-eval model backend ``hf-quant``: an ``HFLM`` that builds the quantized model itself.

lm-eval 0.4.13's own bitsandbytes path is broken on transformers 5 (``load_in_4bit`` reaches the
model constructor), so this backend loads the model with a ``BitsAndBytesConfig`` from a
:class:`~harness_ext.spec.schemes.Scheme` and hands the built model to ``HFLM``. It overrides
``generate_until`` only, to

- sample every row by its own settings and random stream (:mod:`harness_ext.backend.sampler`), so outputs
  do not depend on batching, and temperature 0 always means greedy;
- batch rows of different sampling settings together (grid batching) and serve several
  ``max_gen_toks`` values from one generation, truncated;
- prefill each distinct prompt once for all its rows; on CUDA, decode into a preallocated (static)
  KV cache and size each call from free memory, halving it on out-of-memory;
- instrument every ``generate`` call (:class:`~harness_ext.backend.measure.GenerateStats`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from tqdm import tqdm

from harness_ext.backend.generation import RowGeneration, RowResult, check_mode
from harness_ext.backend.loading import LoadInfo, load_model, scheme_from_args
from harness_ext.backend.measure import GenerateStats, model_devices
from harness_ext.backend.sampler import Row, row_key
from harness_ext.errors import SpecError
from harness_ext.point import SamplingPoint
from harness_ext.spec.schemes import Scheme

log = logging.getLogger(__name__)

#: gen_kwargs that only change how a row samples: rows differing in these can share a batch.
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_gen_toks", "seed")


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


class GeneratedText(str):
    """A generated text that also knows how it ended: ``new_tokens``, ``hit_cap``, ``finish``."""

    new_tokens: int
    hit_cap: bool
    finish: str

    def __new__(cls, text: str, new_tokens: int, hit_cap: bool, finish: str) -> GeneratedText:
        obj = super().__new__(cls, text)
        obj.new_tokens, obj.hit_cap, obj.finish = new_tokens, hit_cap, finish
        return obj


@dataclass
class _Job:
    """A unique generation: requests that differ only in ``max_gen_toks`` share one."""

    context: str
    row: Row
    cap: int
    members: list[tuple[int, int]] = field(default_factory=list)  # (request index, its own cap)


@register_model("hf-quant")
class HFQuantLM(RowGeneration, HFLM):
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
        else:  # a model built by the caller (tests, notebooks): counted as unquantized
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
        self.kv_cache = _kv_cache(kv_cache, self.device)
        self.compiled: dict[str, Any] = {}  # how the compiled mode was set up, for the records
        self.grid_batching = bool(grid_batching)
        self.default_seed = int(seed)
        self.calls: list[GenerateStats] = []
        self.show_progress = True
        self.progress_hook: Callable[[int, int], None] | None = None  # (rows generated, rows) per generate call
        self._rows = [0, 0]  # rows generated and to generate by the generate_until call at work
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

    # -- generation (batches of rows: :class:`~harness_ext.backend.generation.RowGeneration`) ----------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's entry point: group, deduplicate, batch, generate, truncate, post-process."""
        out: list[str | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests),
            disable=disable_tqdm or not self.show_progress or self.rank != 0,
            desc="hf-quant generate",
        )
        groups = self._group(requests)
        self._rows = [0, sum(len(jobs) for _, jobs in groups)]  # generated, to generate: for progress_hook
        for until, jobs in groups:
            for job, row in self._generate_jobs(jobs, until):
                for idx, own_cap in job.members:
                    out[idx] = self._finish(row, own_cap, until, requests[idx])
                    pbar.update(1)
        pbar.close()
        return [o if o is not None else "" for o in out]

    def _group(self, requests: list[Instance]) -> list[tuple[list[str], list[_Job]]]:
        """The requests as jobs, grouped by stop sequences (and, without grid batching, by gen_kwargs):
        requests that differ only in their length cap share a job, as do the repeats of a greedy one."""
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
            row = self._row(SamplingPoint.from_gen_kwargs(kw, self.max_gen_toks), kw, context, sample_index)
            cap = row.point.max_new_tokens
            rest = {k: v for k, v in kw.items() if k not in SAMPLING_KEYS and k not in ("max_new_tokens", "max_length")}
            if rest:
                raise SpecError(f"hf-quant does not support generation kwargs {sorted(rest)}")
            group = repr(until) if self.grid_batching else repr((until, sorted(gen_kwargs.items(), key=str)))
            group_until[group] = until
            job = groups[group].setdefault((context, row.key, row.point.capped(1)), _Job(context, row, cap))
            job.cap = max(job.cap, cap)
            job.members.append((idx, cap))
        return [(group_until[g], list(jobs.values())) for g, jobs in groups.items()]

    def _generate_jobs(self, jobs: list[_Job], until: list[str]) -> Iterator[tuple[_Job, RowResult]]:
        """Generate the jobs of one group, longest prompt first, in calls of as many rows as fit."""
        lengths = {id(j): len(self.tok_encode(j.context)) for j in jobs}
        ordered = sorted(jobs, key=lambda j: -lengths[id(j)])
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
            rows = self.generate_rows(ids, mask, [j.row for j in chunk], [j.cap for j in chunk], until)
            self._rows[0] += len(chunk)
            if self.progress_hook is not None:
                self.progress_hook(*self._rows)
            yield from zip(chunk, rows, strict=True)

    def _row(self, point: SamplingPoint, kw: dict[str, Any], context: str, sample_index: int) -> Row:
        """A request's row: its point as decoding sees it, and its stream (the request's ``seed``, or the
        LM's, with the prompt and the sample index); greedy rows need no stream."""
        point = point.effective()
        if point.greedy:
            return Row(point, 0)
        seed = int(kw.get("seed", self.default_seed))
        return Row(point, row_key(seed, context, sample_index))

    def _finish(self, row: RowResult, cap: int, until: list[str], inst: Instance) -> GeneratedText:
        tokens = row.tokens[:cap]
        finish = row.finish if len(row.tokens) <= cap else "cap"
        text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
        self.cache_hook.add_partial("generate_until", inst.args, text)
        return GeneratedText(text, len(tokens), finish == "cap", finish)


def _kv_cache(kv_cache: str, device: torch.device) -> str:
    """The KV cache eager generation uses. ``auto``: static (preallocated) on CUDA, where DynamicCache's
    per-step ``torch.cat`` of the whole cache dominates large grid-batched passes; dynamic on the CPU
    (``bench/grid_batching.py --kv-cache`` times both)."""
    if kv_cache not in ("auto", "dynamic", "static"):
        raise SpecError(f"kv_cache must be auto, dynamic or static, not {kv_cache!r}")
    return kv_cache if kv_cache != "auto" else ("static" if device.type == "cuda" else "dynamic")
