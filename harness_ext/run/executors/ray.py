"""The Ray executor: each work unit a Ray task on whichever node has the CPUs and GPUs it needs.

Both executors run the same code for a unit (:meth:`harness_ext.run.api.RunnerAPI.run_pair`); they
differ in where. With Ray, each pair is a task that asks for the CPUs and GPUs its model needs, runs
on whichever node has them, and returns its records to the driver, which writes them atomically
into the one run directory — so no shared file system is needed, resume works as locally, and a
cell is stored once whichever task computed it. Ray retries a task whose worker died (a lost node, a
killed process); a cell that fails deterministically is recorded as failed inside the task and is
not retried. The unquantized reference pairs with probe cells run first (their probe logits are what
the other pairs' probes are compared with), then the rest, as many at once as the cluster's GPUs
allow; each record says which worker and GPUs computed it (``measurements.placement``), and a pair
that asks for more GPUs than the cluster has fails at once instead of waiting forever.

Speed rounds: one task per (model, round) runs that round's schemes one after another on the same
GPUs (each in a fresh process, :mod:`harness_ext.run.isolated`), so that a ratio pairs schemes timed
on one device, never GPU 0's round with GPU 1's; such a task asks for whole GPUs (fractional GPUs
would put two timed rounds on one device); and timed windows never overlap on one host (a host-wide
lock around each round's timing, ``run/speed.py``), while loads and warm-ups of other tasks go on.
Before planning, one no-op task per GPU starts a worker with torch and CUDA (and, on the CPU, the rounds' forkserver)
ready.

A worker builds its runner with the driver's runner class, sent by reference in the task's payload
(``payload["runner"]``): this module never imports the runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness_ext.errors import HarnessExtError
from harness_ext.run.api import Pairs, Progress, Records, RunnerAPI, RunnerFactory, TaskParams, TextPairs
from harness_ext.run.executors.local import LocalExecutor
from harness_ext.run.failures import reason
from harness_ext.store import MemoryStore, Record, now

if TYPE_CHECKING:
    from harness_ext.spec import Cell, ModelSpec
    from harness_ext.spec.schemes import Scheme


# -- Ray -----------------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HarnessExtError("executor 'ray' needs Ray: pip install 'harness-ext[ray]'") from None
    return ray


def pair_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run a task's units on a Ray worker, one after another (a speed round's in a fresh process);
    return their records, new artifacts and loads, and the units whose process died, with why."""
    import os

    from harness_ext.run import isolated

    placement = _placement()
    out: dict[str, Any] = {"records": [], "artifacts": {}, "loads": [], "failed": []}
    for unit in payload["units"]:
        one = {**payload, "cell_ids": unit["ids"], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if not (payload.get("isolate") and unit["round"]):
            result = isolated.unit_task(one)
        else:
            try:
                result = isolated.in_fresh_process(one)
            except Exception as e:  # the round's process died: its cells fail, the task goes on
                out["failed"].append((unit["ids"], f"the round's process failed: {reason(e)}"))
                continue
        for data in result["records"]:  # which worker and GPUs computed the cell: evidence that pairs ran where planned
            data["measurements"] = {**data.get("measurements", {}), "placement": placement}
        out["records"] += result["records"]
        out["artifacts"] |= result["artifacts"]
        out["loads"] += result["loads"]
    return out


def warm_task(device: str) -> int:
    """A no-op that leaves its worker warm: torch imported, CUDA initialised (on the CPU, the rounds'
    forkserver started)."""
    import os

    import torch

    from harness_ext.run import isolated

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.init()
    isolated.warm(device)
    return os.getpid()


def _placement() -> dict[str, Any]:
    """This Ray worker's pid, node and GPU ids (as Ray assigned them, and as CUDA sees them)."""
    import os

    ray = _ray()
    ctx = ray.get_runtime_context()
    return {
        "pid": os.getpid(),
        "node_id": ctx.get_node_id(),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def score_task(payload: dict[str, Any]) -> list[float]:
    """Reference scoring on a Ray worker: load the reference once, score every (prompt, text)."""
    from harness_ext.spec import StudySpec

    spec = StudySpec.model_validate(payload["spec"])
    make_runner: RunnerFactory = payload["runner"]
    runner = make_runner(
        spec, payload["spec_text"], progress=False, store=MemoryStore(), device_map=payload.get("device_map")
    )
    model = next(m for m in spec.models if m.label == payload["model"])
    return LocalExecutor().score(runner, model, spec.scheme(payload["reference"]), payload["pairs"])


class RayExecutor:
    """Pairs as Ray tasks (``executor: ray``). ``task_fn`` is the function a task runs (tests swap
    in one that kills its worker, to show that Ray's retry loses and duplicates nothing); ``isolate``:
    speed rounds in fresh processes (default: unless ``HARNESS_EXT_ROUNDS_IN_PROCESS=1``)."""

    def __init__(self, task_fn: Callable[[dict[str, Any]], dict[str, Any]] = pair_task, isolate: bool | None = None):
        from harness_ext.run import isolated

        self.task_fn = task_fn
        self.isolate = isolated.isolating() if isolate is None else isolate

    # resources ----------------------------------------------------------------------------------
    def resources(self, runner: RunnerAPI, model: ModelSpec, scheme: Scheme) -> dict[str, float]:
        """``num_cpus``/``num_gpus`` of a pair: the spec's, or GPUs enough for the weights."""
        opts = runner.spec.ray
        num_gpus = model.num_gpus if model.num_gpus is not None else opts.num_gpus
        if num_gpus is None:
            num_gpus = (
                0.0 if not runner.device.startswith("cuda") else float(gpus_needed(model, scheme, opts.gpu_memory_gb))
            )
        return {"num_cpus": opts.num_cpus, "num_gpus": num_gpus}

    def _init(self, runner: RunnerAPI) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            opts = runner.spec.ray
            ray.init(
                address=opts.address,
                include_dashboard=False,
                ignore_reinit_error=True,
                logging_level="WARNING",
                log_to_driver=False,
            )
        return ray

    def task_resources(self, runner: RunnerAPI, units: list[list[Cell]]) -> dict[str, float]:
        """A task's resources: the most any of its units needs; whole GPUs where it times rounds."""
        each = [self.resources(runner, u[0].model, u[0].scheme) for u in units]
        res = {"num_cpus": max(r["num_cpus"] for r in each), "num_gpus": max(r["num_gpus"] for r in each)}
        if any(isolated_round(u) for u in units) and res["num_gpus"] > 0:
            res["num_gpus"] = float(math.ceil(res["num_gpus"]))  # never two timed rounds on one device
        return res

    def _payload(
        self, runner: RunnerAPI, units: list[list[Cell]], task_params: TaskParams, resources: dict[str, float]
    ) -> dict[str, Any]:
        from harness_ext.run import isolated

        cells = [c for u in units for c in u]
        return isolated.payload(
            runner,
            cells,
            task_params,
            units=[{"ids": [c.id for c in u], "round": isolated_round(u)} for u in units],
            isolate=self.isolate,
            artifacts=_reference_artifacts(runner, cells),
            device_map="auto" if resources["num_gpus"] > 1 else None,
        )

    # pairs --------------------------------------------------------------------------------------
    def run_pairs(self, runner: RunnerAPI, pairs: Pairs, records: Records, task_params: TaskParams) -> None:
        ray = self._init(runner)
        remote = ray.remote(self.task_fn)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        device = next((u[0].device for u in pairs.values()), "cpu")
        warming = [ray.remote(warm_task).options(num_gpus=1).remote(device) for _ in range(int(gpus))]
        for wave in waves(runner, pairs):
            pending: dict[Any, list[Cell]] = {}
            for units in tasks(wave).values():
                cells = [c for u in units for c in u]
                res = self.task_resources(runner, units)
                if res["num_gpus"] > gpus:  # Ray would wait for it forever
                    self._refuse(runner, cells, records, res["num_gpus"], gpus)
                    continue
                opts = {**res, "max_retries": runner.spec.ray.max_retries, "retry_exceptions": False}
                pending[remote.options(**opts).remote(self._payload(runner, units, task_params, res))] = cells
            self._collect(ray, runner, pending, records)
        for ref in warming:  # long done; a worker that failed to warm up only started cold
            try:
                ray.get(ref)
            except Exception:
                continue

    @staticmethod
    def _refuse(runner: RunnerAPI, cells: list[Cell], records: Records, wanted: float, have: float) -> None:
        """Record a pair that asks for more GPUs than the cluster has as failed, with the fix."""
        why = (
            f"needs {wanted:g} GPUs, the Ray cluster has {have:g}: set models[].num_gpus (or ray.num_gpus), "
            "or run it on a larger cluster"
        )
        runner.fail(cells, records, why)

    def _collect(self, ray: Any, runner: RunnerAPI, pending: dict[Any, list[Cell]], records: Records) -> None:
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                for ref in ready:
                    cells = pending.pop(ref)
                    started = now()
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # the task itself broke (not a cell): its cells fail with the reason
                        runner.fail(cells, records, f"ray task failed: {reason(e)}", started=started)
                        continue
                    for name, tensor in result["artifacts"].items():
                        runner.store.put_tensor(name, tensor)
                    for data in result["records"]:
                        runner.save(Record.model_validate(data), records)
                    runner.loads.extend(tuple(x) for x in result["loads"])
                    for ids, why in result.get("failed") or []:
                        runner.fail([c for c in cells if c.id in set(ids)], records, why, started=started)
                if pending:
                    runner.check_time()
        except BaseException:
            for ref in pending:  # interrupted or out of time: stop what is still running
                ray.cancel(ref, force=True)
            raise

    def score(
        self, runner: RunnerAPI, model: ModelSpec, ref: Scheme, pairs: TextPairs, progress: Progress = None
    ) -> list[float] | None:
        """As :meth:`LocalExecutor.score`, in one Ray task (no progress from it: it runs remotely)."""
        ray = self._init(runner)
        res = self.resources(runner, model, ref)
        payload = {
            "runner": type(runner),
            "spec": runner.spec.model_dump(mode="json"),
            "spec_text": runner.spec_text,
            "model": model.label,
            "reference": ref.name,
            "pairs": pairs,
            "device_map": "auto" if res["num_gpus"] > 1 else None,
        }
        runner.scoring_loads.append((model.label, ref.name))
        remote = ray.remote(score_task).options(**res, max_retries=runner.spec.ray.max_retries)
        return ray.get(remote.remote(payload))


def waves(runner: RunnerAPI, pairs: Pairs) -> tuple[Pairs, Pairs]:
    """(first, then): the reference pairs whose probe cells the other pairs' probes compare with, then
    everything else. Only probes need the reference first, so speed-only work (rounds included) all
    goes in the second wave, where it can use every GPU at once."""
    first = {k: v for k, v in pairs.items() if _is_reference(runner, v[0]) and any(c.kind == "probe" for c in v)}
    return first, {k: v for k, v in pairs.items() if k not in first}


def isolated_round(cells: list[Cell]) -> bool:
    """A unit of speed cells: one (model, scheme, round)."""
    return bool(cells) and all(c.kind == "speed" for c in cells)


def tasks(pairs: Pairs) -> dict[Any, list[list[Cell]]]:
    """The Ray tasks of a wave, each a list of units run one after another on one worker: a speed
    round's schemes of one model together (in the round's order), so their ratios pair rounds timed
    on the same GPUs; every other unit a task of its own."""
    out: dict[Any, list[list[Cell]]] = {}
    for key, cells in pairs.items():
        if isolated_round(cells) and len(key) == 3:
            out.setdefault(("round", key[0], key[2]), []).append(cells)
        else:
            out[key] = [cells]
    return out


def _is_reference(runner: RunnerAPI, cell: Cell) -> bool:
    ref = runner.spec.reference_scheme(cell.model)
    return ref is not None and ref.name == cell.scheme.name


def _reference_artifacts(runner: RunnerAPI, cells: list[Cell]) -> dict[str, Any]:
    """The reference probe logits a pair's probe cells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_artifact

    ref = runner.spec.reference_scheme(cells[0].model)
    out: dict[str, Any] = {}
    for c in cells:
        if c.kind == "probe" and ref is not None and ref.name != c.scheme.name:
            name = probe_artifact(c, ref.name)
            tensor = runner.store.get_tensor(name)
            if tensor is not None:
                out[name] = tensor
    return out


def gpus_needed(model: ModelSpec, scheme: Scheme, gpu_memory_gb: float, headroom: float = 1.3) -> int:
    """GPUs for a model's weights in a scheme, with headroom for activations and the KV cache;
    the parameter count comes from the config on the meta device (no weights are read)."""
    params = count_parameters(model)
    per = scheme.resolve(model.dtype).bytes_per_param
    return max(1, math.ceil(params * per * headroom / (gpu_memory_gb * 2**30)))


def count_parameters(model: ModelSpec) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness_ext.backend import shapes, sources

    if model.shape is not None:
        config = shapes.shape_config(model.shape)
    else:
        src = sources.resolve(model.pretrained, gguf_file=model.gguf_file, revision=model.revision)
        config = AutoConfig.from_pretrained(src.path, revision=src.revision, trust_remote_code=model.trust_remote_code)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters())
