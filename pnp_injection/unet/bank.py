"""The feature bank: the source pass's tensors at each injected step (docs/pnp.md, section 3)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import time

import comfy.patcher_extension as ext
import torch

from .. import disk, notices, placement, region
from ..errors import PnPError
from ..inputs import check_same_architecture, check_source_size, check_whole_latent
from ..model_calls import HOST_SIGMA, source_rows
from ..passes import Progress, run_loop
from ..recompute import SourceCalls
from ..schedule import check_same_schedule, injected_steps
from . import families
from . import layers as layer_sets
from .inversion import Trajectory
from .patches import (SCHEDULE_FIX, WRAPPER_KEY, Recorder, attention_name, resblock_name, with_attention_patch_first,
                      without_pnp)


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """Immutable; clones of a patched model share it (see `__deepcopy__`).

    Self-attention is kept as its input, the normed hidden state, from which the injected
    queries and keys are computed by the layer's own projections (one tensor per layer
    instead of two)."""

    sigmas: torch.Tensor                                  # (N+1,) sampling schedule
    start: torch.Tensor                                   # x(sigma_0), model latent space [B, C, H, W]
    residual: dict[int, torch.Tensor]                     # block -> [feature steps, B, C, h, w]
    attention: dict[tuple[int, int], torch.Tensor]        # (block, index) -> [attention steps, B, T, C]
    layers: layer_sets.LayerSet
    architecture: str                                     # layers.signature of the capture model
    source_prompt: list | None = None                     # the source pass's conditioning (not saved to files)
    path: torch.Tensor | None = None                      # x(sigma_0) ... x(sigma_N): [N+1, B, C, H, W] (masked edits)
    mask: torch.Tensor | None = None                      # the source latent's noise_mask, if it carried one
    calls: SourceCalls | None = None                      # the source passes, where the tables are recomputed
    info: str = ""                                        # size, placement, kept steps, time (placement.report)

    @property
    def source_path(self) -> region.SourcePath | None:
        return None if self.path is None else region.SourcePath(self.sigmas, self.path)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def feature_step_count(self) -> int:
        return min((t.shape[0] for t in self.residual.values()), default=0)

    @property
    def attention_step_count(self) -> int:
        return min((t.shape[0] for t in self.attention.values()), default=0)

    @property
    def tables(self) -> dict[tuple[str, object], torch.Tensor]:
        """Every per-step table, keyed as the injection asks for them."""
        return {**{("residual", b): t for b, t in self.residual.items()},
                **{("attention", k): t for k, t in self.attention.items()}}

    def nbytes(self) -> int:
        return placement.nbytes([*self.tables.values(), self.start, *([self.path] if self.path is not None else [])])

    def __deepcopy__(self, memo):
        return self

    def check_injection(self, model_patcher, feature_injection: float, attention_injection: float) -> tuple[int, int]:
        """Injected step counts for these fractions, or a clear error if the bank cannot serve them."""
        feature = injected_steps(self.steps, feature_injection, "feature_injection")
        attention = injected_steps(self.steps, attention_injection, "attention_injection")
        try:
            here = layer_sets.signature(model_patcher, self.layers)
        except PnPError:  # the bank's layers are not in this U-Net (an SD 1.5 bank on SDXL): another architecture
            here = f"{families.model_name(model_patcher)}, without the bank's layers"
        check_same_architecture(self.architecture, here, "Invert and capture the source again")
        if feature and not self.layers.resblocks:
            raise PnPError("This bank's layer set has no ResBlock: set `feature_injection` to 0 or capture with "
                           "ResBlock layers.")
        if attention and not self.layers.attention:
            raise PnPError("This bank's layer set has no attention layer: set `attention_injection` to 0 or capture "
                           "with attention layers.")
        if feature > self.feature_step_count:
            raise PnPError(
                f"`feature_injection` {feature_injection} needs {feature} steps of ResBlock features "
                f"but the bank holds {self.feature_step_count}: raise `feature_steps` in PnP Capture "
                f"Features to at least {feature_injection}."
            )
        if attention > self.attention_step_count:
            raise PnPError(
                f"`attention_injection` {attention_injection} needs {attention} steps of attention "
                f"but the bank holds {self.attention_step_count}: raise `attention_steps` in PnP Capture "
                f"Features to at least {attention_injection}."
            )
        return feature, attention

    def check_schedule(self, sigmas: torch.Tensor, injected: int) -> None:
        check_same_schedule(self.sigmas, sigmas, injected + 1, "feature bank", SCHEDULE_FIX)

    def check_latent(self, shape, batch: bool = True) -> None:
        """Spatial size (and, for a whole latent, batch) the bank can serve."""
        check_source_size(shape, self.start.shape)
        if batch:
            source_rows(self.start.shape[0], shape[0], "latent batch")


def capture(model_patcher, trajectory: Trajectory, feature_steps: float = 0.8, attention_steps: float = 0.5,
            preset: str = "auto", custom_layers: str = "", conditioning=None,
            dtype: torch.dtype | None = None, device: str = "offload", bank: str = "auto") -> FeatureBank:
    """Run the source pass at the first steps and keep the layers' tensors (docs/pnp.md, section 3).

    At step i the U-Net sees the trajectory latent x(sigma_i) with the source prompt, unguided,
    nothing injected. ResBlock outputs are kept for i < int(N * feature_steps), attention inputs
    for i < int(N * attention_steps) (both fractions). They keep the U-Net's compute dtype unless
    `dtype` is given (e.g. float16 for an fp32 model), and live where `bank` says (placement.MODES: in memory,
    on `device` (placement.DEVICES: by default system memory, streamed to the U-Net step by step), in a file, or
    recomputed while sampling from the source passes).
    """
    layers = layer_sets.resolve(model_patcher, preset, custom_layers)
    placement.check_device(device)  # before any U-Net work, not inside the recording hooks
    family = families.family_of(model_patcher)
    if family != trajectory.family:
        raise PnPError(
            f"The trajectory was inverted with a {trajectory.family} model but this model is "
            f"{family}: invert and capture with the same model."
        )
    feature_count = injected_steps(trajectory.steps, feature_steps, "feature_steps")
    attention_count = injected_steps(trajectory.steps, attention_steps, "attention_steps")
    passes = max(feature_count, attention_count)
    rows = trajectory.latents.shape[1]
    where = model_patcher.load_device if device == "model" else placement.bank_device(device, trajectory.latents)
    estimate = estimate_bytes(model_patcher, layers, trajectory.latents.shape[1:], feature_count, attention_count, dtype)
    chosen = placement.choose(bank, estimate, where, disk.free_bytes, passes * placement.nbytes([trajectory.latents[0]]))
    tables = placement.recording_tables(chosen, lambda key: feature_count if key[0] == "residual" else attention_count,
                                        lambda t: placement.bank_device(device, t), dtype)
    calls = SourceCalls(placement.storage_device()) if chosen.mode == "recompute" else None
    recorder = Recorder(trajectory.sigmas, layers, feature_count, attention_count, rows, tables, calls)

    conditioning = conditioning or trajectory.conditioning
    check_whole_latent(conditioning, "The source prompt of PnP Capture Features")
    started = time.perf_counter()
    if passes:
        patched = without_pnp(model_patcher)
        patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, recorder)
        if attention_count:
            with_attention_patch_first(patched)
        progress = Progress(passes)

        def loop(model, x, sigmas):
            ones = x.new_ones(x.shape[0])
            levels = trajectory.sigmas.tolist()
            for i in range(passes):
                model(trajectory.latents[i].to(x), levels[i] * ones, **{HOST_SIGMA: levels[i]})
                progress.step()
            return x

        latent = torch.zeros_like(trajectory.latents[0])  # unused: the loop reads the trajectory
        run_loop(patched, conditioning, latent, trajectory.sigmas[: passes + 1], loop)

    bank = FeatureBank(
        sigmas=trajectory.sigmas,
        start=trajectory.latents[0],
        residual={b: tables.complete(("residual", b), feature_count, resblock_name(b)) for b in layers.resblocks},
        attention={k: tables.complete(("attention", k), attention_count, attention_name(k)) for k in layers.attention},
        layers=layers,
        architecture=layer_sets.signature(model_patcher, layers),
        source_prompt=conditioning,
        path=trajectory.path,
        mask=trajectory.mask,
        calls=calls,
    )
    info = placement.report("PnP Capture Features", chosen, bank.tables.values(), time.perf_counter() - started,
                            f"ResBlocks at {feature_count} and attention at {attention_count} of {trajectory.steps} "
                            f"steps", calls.nbytes() if calls is not None else 0)
    notices.show(info)
    return replace(bank, info=info)


def estimate_bytes(model_patcher, layers: layer_sets.LayerSet, latent_shape, feature_count: int,
                   attention_count: int, dtype: torch.dtype | None) -> int:
    """The bank's size before any U-Net work: each layer's tensor at its decoder resolution,
    for every kept step and source row, in the dtype it will be kept in."""
    unet = model_patcher.model.diffusion_model
    rows, height, width = latent_shape[0], latent_shape[-2], latent_shape[-1]
    size = (dtype or placement.compute_dtype(model_patcher)).itemsize
    total = 0
    for block in layers.resblocks:
        h, w = layer_sets.output_resolution(unet, block, height, width)
        total += feature_count * rows * layer_sets.residual_module(unet, block).out_channels * h * w
    for key in layers.attention:
        h, w = layer_sets.output_resolution(unet, key[0], height, width)
        total += attention_count * rows * h * w * layer_sets.attention_module(unet, key).to_q.in_features
    return total * size

