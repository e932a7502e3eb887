"""GPU benchmark: the service's own FLUX.1 generation path against a bare diffusers loop.

On a CUDA machine this builds full-size FLUX.1 components with random weights directly on the
GPU in bf16 (speed and memory do not depend on the weights; nothing is downloaded or written to
disk) and measures, in one run and on the same pipeline object:

  bare      `FluxPipeline.__call__` in a loop, as in the diffusers docs
  service   `generation.service.generate(spec, settings)`: validation, per-image seeds and
            generators, the progress callback, PNG encoding (only loading is bypassed)

for schnell 4 steps 1024² at batch 1 and 4, and dev 28 steps 1024² at batch 1; then the same
with fused QKV projections, with `torch.compile` of the transformer, and with both. It prints
seconds per image, images per hour and peak GPU memory for each, the ratio to bare eager, and
the figures of context/gpu-anchors.md next to them.

Targets: the service at >= 97% of bare throughput; then >= 1.3x bare eager with what helps.

    python bench/gpu_generation.py                      # all cases, all modes (est. ~8 min, H100)
    python bench/gpu_generation.py --cases schnell-b1 --repeats 5 --json out.json
    python bench/gpu_generation.py --no-compile
    python bench/gpu_generation.py --tiny-dry-run       # CPU, scaled down: exercises the code

Without CUDA (and without --tiny-dry-run) it says so and exits 0. A benchmark: not part of the
test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from core.settings import GenerationSettings, Settings
from generation import memory
from generation import service as generation_service
from generation.schemas import GenerationSpec
from generation.tiny import _clip_tokenizer, _t5_tokenizer
from generation.variants import get_variant

GIB = 1024**3
PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"
SEED = 1234
# Weights (~31.4 GiB for one transformer, T5-XXL, CLIP-L and the VAE in bf16), fused QKV copies
# (~4 GiB: diffusers keeps the unfused projections) and activations at 1024² batch 4.
FULL_SIZE_NEED_BYTES = 44 * GIB


# --- cases, modes, anchors -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    variant: Literal["schnell", "dev"]
    steps: int
    size: int
    batch: int


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("schnell-b1", "schnell", 4, 1024, 1),
        Case("schnell-b4", "schnell", 4, 1024, 4),
        Case("dev-b1", "dev", 28, 1024, 1),
    )
}


@dataclass(frozen=True)
class Mode:
    runner: Literal["bare", "service"]
    fused: bool = False
    compiled: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.runner] + ["fused"] * self.fused + ["compile"] * self.compiled)

    @classmethod
    def parse(cls, text: str) -> Mode:
        runner, *extras = text.strip().split("+")
        if runner not in ("bare", "service") or not set(extras) <= {"fused", "compile"}:
            raise argparse.ArgumentTypeError(
                f"mode {text!r}: use bare or service, optionally +fused and/or +compile"
            )
        return cls(
            "bare" if runner == "bare" else "service", "fused" in extras, "compile" in extras
        )


DEFAULT_MODES = (
    Mode("bare"),
    Mode("service"),
    Mode("bare", fused=True),
    Mode("bare", compiled=True),
    Mode("bare", fused=True, compiled=True),
    Mode("service", fused=True, compiled=True),
)


@dataclass(frozen=True)
class Anchor:
    seconds_per_call: float
    images_per_hour: int | None
    peak_gib: float | None


# context/gpu-anchors.md: bare FluxPipeline with precomputed prompt embeddings (this script
# passes the prompt, ~0.03 s more per call), bf16, one H100 80GB HBM3, torch 2.11, diffusers 0.42.1.
ANCHORS: dict[tuple[str, str], Anchor] = {
    ("schnell-b1", "bare"): Anchor(0.81, 4455, 33.8),
    ("schnell-b4", "bare"): Anchor(3.09, 4659, 39.5),
    ("dev-b1", "bare"): Anchor(5.23, 688, 56.0),
    ("schnell-b1", "bare+fused"): Anchor(0.838, None, None),
    ("schnell-b1", "bare+fused+compile"): Anchor(0.640, 5629, None),
}


# --- building FLUX.1 with random weights ---------------------------------------------------


@dataclass(frozen=True)
class Dims:
    """Widths and depths of the components; FULL is FLUX.1 [dev]/[schnell]."""

    layers: int
    single_layers: int
    heads: int
    head_dim: int
    rope_axes: tuple[int, int, int]
    t5_width: int
    t5_layers: int
    t5_heads: int
    t5_d_kv: int
    t5_d_ff: int
    t5_vocab: int
    clip_width: int
    clip_layers: int
    clip_heads: int
    clip_d_ff: int
    clip_vocab: int
    vae_channels: tuple[int, int, int, int]
    vae_layers_per_block: int
    vae_groups: int


FULL = Dims(
    layers=19,
    single_layers=38,
    heads=24,
    head_dim=128,
    rope_axes=(16, 56, 56),
    t5_width=4096,
    t5_layers=24,
    t5_heads=64,
    t5_d_kv=64,
    t5_d_ff=10240,
    t5_vocab=32128,
    clip_width=768,
    clip_layers=12,
    clip_heads=12,
    clip_d_ff=3072,
    clip_vocab=49408,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    vae_groups=32,
)
TINY = Dims(
    layers=1,
    single_layers=1,
    heads=2,
    head_dim=16,
    rope_axes=(4, 6, 6),
    t5_width=32,
    t5_layers=2,
    t5_heads=4,
    t5_d_kv=8,
    t5_d_ff=37,
    t5_vocab=32128,
    clip_width=32,
    clip_layers=2,
    clip_heads=4,
    clip_d_ff=37,
    clip_vocab=49408,
    vae_channels=(8, 8, 8, 8),
    vae_layers_per_block=1,
    vae_groups=4,
)


@contextlib.contextmanager
def _building_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Modules created inside get their random weights on `device` in `dtype` directly: no
    48 GB float32 copy on the host, no second copy on the GPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _frozen(module: Any) -> Any:
    # Built modules start in training mode (T5's dropout would run); from_pretrained returns
    # them in eval mode, which is what the service runs.
    module.eval()
    module.requires_grad_(False)
    return module


def build_shared(dims: Dims, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Tokenizers, CLIP-L and T5-XXL text encoders and the 16-channel VAE, shared by both
    variants. The tokenizers are the tiny in-memory ones: every prompt is padded to
    max_sequence_length tokens, so the vocabulary does not change the cost."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer: Any = _clip_tokenizer()
    tokenizer_2: Any = _t5_tokenizer()
    if len(tokenizer) > dims.clip_vocab or len(tokenizer_2) > dims.t5_vocab:
        raise ValueError("the tokenizers' vocabularies must fit the text encoders' embeddings")
    with _building_on(device, dtype):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=dims.clip_vocab,
                hidden_size=dims.clip_width,
                intermediate_size=dims.clip_d_ff,
                num_hidden_layers=dims.clip_layers,
                num_attention_heads=dims.clip_heads,
                max_position_embeddings=77,
                projection_dim=dims.clip_width,
                hidden_act="quick_gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=dims.t5_vocab,
                d_model=dims.t5_width,
                d_kv=dims.t5_d_kv,
                d_ff=dims.t5_d_ff,
                num_layers=dims.t5_layers,
                num_heads=dims.t5_heads,
                feed_forward_proj="gated-gelu",
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=dims.vae_channels,
            layers_per_block=dims.vae_layers_per_block,
            act_fn="silu",
            latent_channels=16,
            norm_num_groups=dims.vae_groups,
            sample_size=1024,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.1159,
            scaling_factor=0.3611,
        )
    return {
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "text_encoder": _frozen(text_encoder),
        "text_encoder_2": _frozen(text_encoder_2),
        "vae": _frozen(vae),
    }


def build_pipeline(
    dims: Dims, variant: str, shared: dict[str, Any], device: str, dtype: torch.dtype
) -> Any:
    """A FluxPipeline for `variant` with a freshly built transformer: [dev] embeds the
    guidance scale, [schnell] does not; the schedulers are those of the two checkpoints."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    dev = variant == "dev"
    with _building_on(device, dtype):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=dims.layers,
            num_single_layers=dims.single_layers,
            attention_head_dim=dims.head_dim,
            num_attention_heads=dims.heads,
            joint_attention_dim=dims.t5_width,
            pooled_projection_dim=dims.clip_width,
            guidance_embeds=dev,
            axes_dims_rope=dims.rope_axes,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if dev else 1.0,
        use_dynamic_shifting=dev,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipeline: Any = FluxPipeline(scheduler=scheduler, transformer=_frozen(transformer), **shared)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def install_in_service(pipeline: Any, folder: Path, free_bytes: int | None) -> None:
    """Put `pipeline` in the service's per-process cache, where `_load` finds it.

    Only the weight loading is bypassed (`_load_pipeline`: the folder check against its
    registration, `from_pretrained`, the placement); everything `generate` does per job runs
    as in a worker."""
    components = [pipeline.transformer, pipeline.text_encoder, pipeline.text_encoder_2]
    counts = [_parameters(c) for c in [*components, pipeline.vae]]
    dtype_bytes = pipeline.transformer.dtype.itemsize
    activations = memory.ACTIVATION_BYTES_PER_MEGAPIXEL
    plan = memory.MemoryPlan(
        placement=memory.GPU if free_bytes is not None else memory.CPU,
        need_bytes=sum(counts) * dtype_bytes + activations + memory.OVERHEAD_BYTES,
        largest_component_bytes=max(counts) * dtype_bytes + activations + memory.OVERHEAD_BYTES,
        free_bytes=free_bytes,
    )
    generation_service._loaded[folder] = generation_service._Loaded(pipeline, plan)


# --- optimisations -------------------------------------------------------------------------


@dataclass
class Optimisation:
    """Which of fused QKV and torch.compile the pipeline's transformer has now."""

    compile_backend: str
    fused: bool = False
    compiled: bool = False

    def apply(self, pipeline: Any, *, fused: bool, compiled: bool) -> None:
        if (fused, compiled) == (self.fused, self.compiled):
            return
        if self.compiled:
            pipeline.transformer = pipeline.transformer._orig_mod
            self.compiled = False
        if fused != self.fused:
            if fused:
                pipeline.transformer.fuse_qkv_projections()
            else:
                pipeline.transformer.unfuse_qkv_projections()
            self.fused = fused
        if compiled:
            # A fresh start, so each compiled configuration's first call pays its whole
            # compile; static shapes, so no call runs a shape-generic graph.
            torch._dynamo.reset()
            pipeline.transformer = torch.compile(
                pipeline.transformer, backend=self.compile_backend, dynamic=False
            )
            self.compiled = True

    def reset(self, pipeline: Any) -> None:
        self.apply(pipeline, fused=False, compiled=False)
        torch._dynamo.reset()


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Measurement:
    case: str
    mode: str
    batch: int
    calls_s: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    # Service only: GenerationResult.seconds, the time inside the model (no PNG encoding).
    model_s: list[float] = field(default_factory=list)
    peak_gib: float | None = None
    error: str | None = None

    @property
    def seconds_per_call(self) -> float | None:
        return statistics.median(self.calls_s) if self.calls_s else None

    @property
    def seconds_per_image(self) -> float | None:
        per_call = self.seconds_per_call
        return None if per_call is None else per_call / self.batch

    @property
    def images_per_hour(self) -> float | None:
        per_image = self.seconds_per_image
        return None if not per_image else 3600 / per_image

    @property
    def outside_model_s_per_image(self) -> float | None:
        """Service time outside the pipeline call (PNG encoding, mostly), per image."""
        if not self.model_s or not self.calls_s:
            return None
        wall = statistics.median(self.calls_s)
        return (wall - statistics.median(self.model_s)) / self.batch

    def describe(self) -> str:
        if self.error is not None:
            return f"FAILED {self.error}"
        return (
            f"{_fmt(self.seconds_per_image, '.3f')} s/image, first call "
            f"{_fmt(self.first_call_s, '.1f')} s, peak {_fmt(self.peak_gib, '.1f')} GiB"
        )

    def record(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seconds_per_call": self.seconds_per_call,
            "seconds_per_image": self.seconds_per_image,
            "images_per_hour": self.images_per_hour,
            "outside_model_s_per_image": self.outside_model_s_per_image,
        }


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    _synchronize()
    started = time.perf_counter()
    result = call()
    _synchronize()
    return time.perf_counter() - started, result


def measure(
    case: Case, mode: Mode, call: Callable[[], Any], repeats: int, model_seconds: bool
) -> tuple[Measurement, Any]:
    """One warm-up call (timed: for compiled modes it holds the compile), then the median
    of `repeats` calls; peak memory over the timed calls. Returns the last call's output."""
    result = Measurement(case.name, mode.name, case.batch)
    output: Any = None
    cuda = torch.cuda.is_available()
    try:
        result.first_call_s, output = _timed(call)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            seconds, output = _timed(call)
            result.calls_s.append(seconds)
            if model_seconds:
                result.model_s.append(output.seconds)
        if cuda:
            result.peak_gib = torch.cuda.max_memory_allocated() / GIB
    except Exception as e:  # a benchmark reports a failed mode and goes on to the next
        result.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        output = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return result, output


def _generators(batch: int) -> list[torch.Generator]:
    # As the service does: one CPU generator per image, seeded SEED + i.
    return [torch.Generator(device="cpu").manual_seed(SEED + i) for i in range(batch)]


def bare_call(pipeline: Any, case: Case, size: int, steps: int) -> Callable[[], Any]:
    variant = get_variant(case.variant)

    def call() -> Any:
        # inference_mode as the service uses it: the same autograd state for both, so a
        # compiled transformer is compiled once for both.
        with torch.inference_mode():
            return pipeline(
                prompt=PROMPT,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=variant.guidance_scale,
                max_sequence_length=variant.max_sequence_length,
                num_images_per_prompt=case.batch,
                generator=_generators(case.batch),
                output_type="pil",
            ).images

    return call


def service_call(settings: Settings, case: Case, size: int, steps: int) -> Callable[[], Any]:
    spec = GenerationSpec(
        prompt=PROMPT,
        variant=case.variant,
        width=size,
        height=size,
        seed=SEED,
        n_images=case.batch,
        steps=steps,
    )

    def call() -> Any:
        progress: list[tuple[int, int]] = []
        result = generation_service.generate(
            spec, settings, on_step=lambda done, total: progress.append((done, total))
        )
        if len(result.images) != case.batch or progress[-1] != (steps, steps):
            raise RuntimeError(
                f"service returned {len(result.images)} images, progress {progress[-1:]}"
            )
        return result

    return call


def _pixel_difference(bare_images: Any, service_result: Any) -> int:
    """Largest difference (0-255) between image 0 of the bare call and of the service, both
    from seed SEED: the service runs the same pipeline on the same inputs."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(service_result.images[0].png)) as decoded:
        service_pixels = np.asarray(decoded.convert("RGB"), dtype=np.int16)
    bare_pixels = np.asarray(bare_images[0].convert("RGB"), dtype=np.int16)
    return int(np.abs(service_pixels - bare_pixels).max())


@dataclass
class Bench:
    """What every measurement of one run shares."""

    settings: Settings
    dims: Dims
    device: str
    dtype: torch.dtype
    repeats: int
    # None: each case's own size; the dry run uses 256² and one step instead.
    size: int | None
    dry: bool
    free_bytes: int | None
    modes: list[Mode]
    compile_backend: str
    save: Callable[[], None]
    results: list[Measurement]


def run_variant(bench: Bench, variant: str, cases: Sequence[Case], shared: dict[str, Any]) -> None:
    """Build the variant's transformer, measure every mode of every case on it, and drop it
    (on return nothing here refers to it any more)."""
    started = time.perf_counter()
    pipeline = build_pipeline(bench.dims, variant, shared, bench.device, bench.dtype)
    folder = bench.settings.generation.local_models[variant]
    install_in_service(pipeline, folder, bench.free_bytes)
    print(
        f"{variant}: transformer of {_parameters(pipeline.transformer):,} parameters built in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    optimisation = Optimisation(bench.compile_backend)
    try:
        for case in cases:
            steps = 1 if bench.dry else case.steps
            side = bench.size or case.size
            bare_images: Any = None
            for mode in bench.modes:
                optimisation.apply(pipeline, fused=mode.fused, compiled=mode.compiled)
                if mode.runner == "bare":
                    call = bare_call(pipeline, case, side, steps)
                else:
                    call = service_call(bench.settings, case, side, steps)
                result, output = measure(
                    case, mode, call, bench.repeats, model_seconds=mode.runner == "service"
                )
                bench.results.append(result)
                bench.save()
                print(f"  {case.name} {mode.name}: {result.describe()}", flush=True)
                if mode == Mode("bare"):
                    bare_images = output
                elif mode == Mode("service") and bare_images is not None and output is not None:
                    print(
                        f"  {case.name}: service image 0 differs from bare image 0 (same seed) "
                        f"by at most {_pixel_difference(bare_images, output)}/255",
                        flush=True,
                    )
            optimisation.reset(pipeline)
    finally:
        generation_service._loaded.pop(folder, None)
        optimisation.reset(pipeline)


# --- reporting -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def print_table(results: Sequence[Measurement]) -> None:
    baseline = {r.case: r.seconds_per_image for r in results if r.mode == "bare"}
    header = (
        f"{'case':<11} {'mode':<22} {'s/call':>7} {'s/image':>8} {'images/h':>9} "
        f"{'peak GiB':>8} {'1st call s':>10} {'x bare':>6} {'non-model s/img':>15} "
        f"{'anchor s/call':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        anchor = ANCHORS.get((r.case, r.mode))
        if r.error is not None:
            print(f"{r.case:<11} {r.mode:<22} FAILED: {r.error}")
            continue
        base, mine = baseline.get(r.case), r.seconds_per_image
        ratio = None if not base or not mine else base / mine
        print(
            f"{r.case:<11} {r.mode:<22} {_fmt(r.seconds_per_call, '.3f'):>7} "
            f"{_fmt(mine, '.3f'):>8} {_fmt(r.images_per_hour, ',.0f'):>9} "
            f"{_fmt(r.peak_gib, '.1f'):>8} {_fmt(r.first_call_s, '.1f'):>10} "
            f"{_fmt(ratio, '.2f'):>6} {_fmt(r.outside_model_s_per_image, '.3f'):>15} "
            f"{_fmt(anchor.seconds_per_call if anchor else None, '.3f'):>13}"
        )


def print_summary(results: Sequence[Measurement]) -> None:
    """The two targets: the service at >= 97% of bare throughput in the same configuration,
    and the service at >= 1.3x bare eager with what helps (batching included)."""
    ok = {(r.case, r.mode): r for r in results if r.error is None and r.seconds_per_image}
    print()
    for case in dict.fromkeys(r.case for r in results):
        for bare in [r for (c, m), r in ok.items() if c == case and m.startswith("bare")]:
            served = ok.get((case, "service" + bare.mode.removeprefix("bare")))
            if served is None or not served.seconds_per_image or not bare.seconds_per_image:
                continue
            share = bare.seconds_per_image / served.seconds_per_image
            in_model = ""
            if served.model_s:
                model_share = (
                    bare.seconds_per_image * served.batch / statistics.median(served.model_s)
                )
                in_model = f"; inside the pipeline call {model_share:.1%}"
            print(
                f"{case}: {served.mode} at {share:.1%} of {bare.mode} throughput "
                f"(target >= 97%: {'met' if share >= 0.97 else 'NOT met'}){in_model}; "
                f"outside it {_fmt(served.outside_model_s_per_image, '.3f')} s/image"
            )
    for variant in ("schnell", "dev"):
        eager = ok.get((f"{variant}-b1", "bare"))
        services = [r for (c, m), r in ok.items() if c.startswith(variant) and m != "bare"]
        services = [r for r in services if r.mode.startswith("service")]
        if eager is None or not eager.seconds_per_image or not services:
            continue
        best = min(services, key=lambda r: r.seconds_per_image or float("inf"))
        assert best.seconds_per_image is not None
        speedup = eager.seconds_per_image / best.seconds_per_image
        print(
            f"{variant}: fastest service run {best.case} {best.mode}, "
            f"{_fmt(best.images_per_hour, ',.0f')} images/hour = {speedup:.2f}x bare eager at "
            f"batch 1 (target >= 1.3x: {'met' if speedup >= 1.3 else 'NOT met'})"
        )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated, from {', '.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(m.name for m in DEFAULT_MODES),
        help="comma-separated: bare or service, each optionally +fused and/or +compile "
        "(default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode (median)")
    parser.add_argument("--no-compile", action="store_true", help="skip the +compile modes")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: inductor; eager with --tiny-dry-run)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here (after each mode)")
    parser.add_argument(
        "--tiny-dry-run",
        action="store_true",
        help="scaled-down FLUX on CPU, 256², 1 step, 1 repeat: runs every mode through the "
        "same code to check the script, measures nothing meaningful",
    )
    args = parser.parse_args(argv)
    try:
        args.cases = [CASES[name.strip()] for name in args.cases.split(",") if name.strip()]
    except KeyError as e:
        parser.error(f"unknown case {e}; valid: {', '.join(CASES)}")
    try:
        modes = [Mode.parse(text) for text in args.modes.split(",") if text.strip()]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.no_compile:
        modes = [m for m in modes if not m.compiled]
    # Grouped by configuration, fewest changes first; bare before service within each.
    args.modes = sorted(
        dict.fromkeys(modes), key=lambda m: (m.fused, m.compiled, m.runner != "bare")
    )
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.tiny_dry_run else "inductor"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dry = args.tiny_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark needs one; nothing measured")
        return 0
    free: int | None = None
    size: int | None = None
    if dry:
        device, dtype, dims, repeats, size = "cpu", torch.bfloat16, TINY, 1, 256
        print("tiny dry run on CPU: scaled-down FLUX, 256², 1 step; the figures mean nothing")
    else:
        device, dtype, dims, repeats = "cuda", torch.bfloat16, FULL, args.repeats
        free, total = torch.cuda.mem_get_info()
        if free < FULL_SIZE_NEED_BYTES:
            print(
                f"{torch.cuda.get_device_name()} has {free / GIB:.1f} GiB free of "
                f"{total / GIB:.1f}; full-size FLUX.1 needs ~{FULL_SIZE_NEED_BYTES / GIB:.0f} GiB"
            )
            return 1
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny dry run)",
        **_versions(),
        "dtype": str(dtype),
        "repeats": repeats,
        "compile_backend": args.compile_backend,
        "modes": [m.name for m in args.modes],
    }
    print(" | ".join(f"{k} {v}" for k, v in info.items() if k != "modes"))

    results: list[Measurement] = []

    def save() -> None:
        if args.json is not None:
            payload = {**info, "results": [r.record() for r in results]}
            args.json.write_text(json.dumps(payload, indent=2) + "\n")

    # Placeholder folders: nothing is read from them, the service finds its pipelines cached.
    placeholder = Path(tempfile.gettempdir()) / "clearance-bench-random-flux"
    bench = Bench(
        settings=Settings(
            generation=GenerationSettings(
                local_models={v: placeholder / v for v in ("schnell", "dev")},
                allow_tiny_fallback=False,
            )
        ),
        dims=dims,
        device=device,
        dtype=dtype,
        repeats=repeats,
        size=size,
        dry=dry,
        free_bytes=free,
        modes=args.modes,
        compile_backend=args.compile_backend,
        save=save,
        results=results,
    )
    started = time.perf_counter()
    shared = build_shared(dims, device, dtype)
    print(f"text encoders and VAE built in {time.perf_counter() - started:.1f} s", flush=True)
    for variant in ("schnell", "dev"):
        cases = [c for c in args.cases if c.variant == variant]
        if cases:
            run_variant(bench, variant, cases, shared)
            # Only one transformer on the device at a time: the next one's peak is its own.
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()

    print()
    print(" | ".join(f"{k} {v}" for k, v in info.items() if k != "modes"))
    print_table(results)
    print_summary(results)
    if dry:
        print("(dry run: the code paths ran; the figures and verdicts above mean nothing)")
    print(
        "\nx bare: images/hour over bare eager of the same case. non-model s/img: service time "
        "outside the pipeline call (PNG encoding). Peak: torch max_memory_allocated over the "
        "timed calls, all weights resident (fused modes keep the unfused projections too). "
        "Anchors (context/gpu-anchors.md): H100 80GB, precomputed prompt embeddings."
    )
    save()
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
