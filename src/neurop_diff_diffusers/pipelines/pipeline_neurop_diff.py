"""NeurOp-Diff pipeline: a neural-operator prior at the HR size + SR3-style diffusion (docs/method.md sections 2-3)."""

from __future__ import annotations

import functools
import inspect
import logging
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from ..defaults import DEFAULT_MAX_OUTPUT_PIXELS

# model_index.json names this module as the operator's library, and diffusers loads a component only from a module
# that is already imported: loading a pipeline must import it (the package's own import is lazy).
from ..models import neural_operator as _neural_operator  # noqa: F401
from .call_checks import CallArguments, callback_tensor, check_call_inputs, check_generator
from .data_consistency import back_project, check_back_projection_steps
from .hub import make_hub_ready, push_folder_to_hub
from .image_processing import (
    ImageInput,
    check_finite_output,
    check_output_type,
    postprocess_images,
    preprocess_images,
    resolve_output_size,
)
from .scheduling import check_eta, check_strength, noise_level, strength_steps
from .tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, num_tiles, tiled_apply
from .uncertainty import (
    DEFAULT_UNCERTAINTY_SIGMA,
    NeurOpDiffPipelineOutput,
    check_num_samples,
    check_uncertainty_sigma,
    flip_each,
    pool_uncertainty,
    reduce_samples,
    sample_generators,
)

#: Byte alignment of CPU weights that the pipeline guarantees (PyTorch's own CPU allocations are aligned to it).
WEIGHT_ALIGNMENT = 64


def own_aligned_weights(module: torch.nn.Module | None, alignment: int = WEIGHT_ALIGNMENT) -> int:
    """Copy the CPU parameters and buffers of ``module`` whose memory is not ``alignment``-byte aligned.

    Weights loaded from safetensors are memory-mapped views of the file, at whatever offset the file gives them; CPU
    kernels take other code paths for unaligned data on some processors (e.g. AVX-512 ones), so the same weights
    could give outputs that differ in the last bits between a built and a loaded pipeline. A copy owns fresh,
    aligned memory: every pipeline then computes bit-identical outputs for a seed, built or loaded, on any CPU.

    Args:
        module (`torch.nn.Module`, *optional*): the module (``None``: nothing to do).
        alignment (`int`, defaults to `WEIGHT_ALIGNMENT`): the byte alignment to guarantee.

    Returns:
        `int`: How many tensors were copied.

    Example:
        >>> layer = torch.nn.Linear(3, 3)
        >>> layer.weight.data = torch.zeros(13)[1:10].view(3, 3)  # 4 bytes past an aligned start
        >>> own_aligned_weights(layer), layer.weight.data_ptr() % 64
        (1, 0)
    """
    if module is None:
        return 0
    copied = 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
                copied += 1
    return copied


def bicubic_prior(image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """The SR3 conditioner: bicubic upsampling of ``image`` (in ``[-1, 1]``) to ``output_size``, clamped.

    Args:
        image (`torch.Tensor`): the images ``(B, C, h, w)`` in ``[-1, 1]``.
        output_size (`tuple[int, int]`): ``(height, width)`` of the output.

    Returns:
        `torch.Tensor`: the upsampled images ``(B, C, height, width)``, clamped to ``[-1, 1]``.
    """
    return F.interpolate(image, size=output_size, mode="bicubic", align_corners=False).clamp(-1, 1)


def unet_downsampling_factor(unet: Any) -> int:
    """The factor by which a diffusers ``UNet2DModel`` downsamples: ``2 ** (number of levels - 1)``.

    Input sides must be multiples of it (the pipeline pads and crops back; training checks ``--crop_size``).

    Args:
        unet (`UNet2DModel`): the denoiser (only its ``config.block_out_channels`` is read).

    Returns:
        `int`: the downsampling factor.

    Example:
        >>> from neurop_diff_diffusers.runtime.presets import build_unet
        >>> unet_downsampling_factor(build_unet("tiny"))
        4
    """
    return 2 ** (len(unet.config.block_out_channels) - 1)


class NeurOpDiffPipeline(DiffusionPipeline):
    r"""Continuous-scale super-resolution with NeurOp-Diff.

    The neural operator turns the LR image into a prior at the requested HR size; a UNet (6 input channels: noisy
    image + prior) denoises from pure noise, conditioned on that prior, with the continuous noise level
    ``sqrt(alphas_cumprod[t])`` as its "timestep" (SR3).

    Weights are made to own aligned memory when the pipeline is built ([`own_aligned_weights`]): a loaded pipeline
    computes bit-identical outputs to the one that was saved, for the same seed, on any CPU.

    Reduced precision (not in the paper): ``pipe.to(dtype=torch.bfloat16)`` (CPUs with bfloat16 units, GPUs) or
    ``torch.float16`` (GPUs), or ``from_pretrained(..., torch_dtype=...)``, runs the UNet in that dtype while the
    neural operator stays in float32 (in bfloat16 its Galerkin sums over all output pixels lose up to 2.7 on the
    ``[-1, 1]`` scale and it is not faster) and the noise, the prior and the sampler's arithmetic stay in float32.
    With ``pipe.unet.to(memory_format=torch.channels_last)`` the UNet's convolutions take the faster channels-last
    kernels; both are measured in the README ("Speed").

    Differences from the authors' code, deliberate: the prior is computed once per call, not at every step
    (``recompute_prior_every_step=True`` restores their behaviour, e.g. for timing comparisons; the result is the
    same); the output size may be any ``(height, width)``. Without a neural operator (``neural_operator=None``) the
    prior is the bicubic upsampling of the input: the SR3 baseline of the paper's Table 5.

    Args:
        unet ([`UNet2DModel`]): the denoiser, ``in_channels = 2 * out_channels``.
        neural_operator ([`GalerkinNeuralOperator`], *optional*): the prior (any model with its ``forward(image,
            output_size, chunk_size)``); ``None`` for a bicubic prior.
        scheduler ([`SchedulerMixin`]): DDIM by default; DDPM and other diffusers schedulers with ``step`` work too.
        default_strength (`float`, defaults to `1.0`): the `strength` used when a call gives none; saved in
            ``model_index.json``. 1.0 is the paper's sampler (from pure noise); a model whose denoiser is only
            reliable at low noise levels ships a lower value.
        residual (`bool`, defaults to `False`): residual diffusion, not in the paper: the diffused variable is
            ``HR - prior`` and the pipeline adds the prior to the sample at the end (``False``: the paper, the
            diffused variable is the HR image). Saved in ``model_index.json``; it must match how the UNet was trained
            (``--residual_diffusion``). What the UNet predicts (epsilon, v or x0) is the scheduler's
            ``prediction_type``.
        default_eta (`float`, defaults to `0.0`): DDIM's `eta` used when a call gives none (0: deterministic DDIM,
            the paper's; 1: DDPM-like stochastic steps); saved in ``model_index.json``.
        default_data_consistency_steps (`int`, defaults to `0`): the `data_consistency_steps` used when a call
            gives none; saved in ``model_index.json``. 0 is the paper (no back-projection); the embedded model ships
            the value chosen by measurement (README, "Can I trust the detail?").
        uncertainty_error_bound_90 (`dict` or `list`, *optional*): the factor that turns the uncertainty map into a
            90 % error bound, fitted on training images, or a list of them for other ``N`` / step counts
            ([`~neurop_diff_diffusers.pipelines.uncertainty_calibration`]: checked by its `check_error_bound` when a
            folder is loaded, looked up by `error_bound_factor`); saved in ``model_index.json``; ``None``: none.

    Raises:
        TypeError: if ``default_strength`` is not a number or ``residual`` is not a bool.
        ValueError: if ``default_strength`` is not in ``(0, 1]``, ``default_eta`` is not a number in ``[0, 1]`` or
            ``default_data_consistency_steps`` is not an int in ``[0, 100]``.

    Example:
        >>> import PIL.Image
        >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
        >>> pipe = build_pipeline("tiny")  # randomly initialised: the output is noise-like
        >>> out = pipe(PIL.Image.new("RGB", (24, 16)), scale=2.5, num_inference_steps=2).images[0]
        >>> out.size
        (60, 40)
    """

    model_cpu_offload_seq = "neural_operator->unet"
    _optional_components = ["neural_operator"]
    _callback_tensor_inputs = ["latents", "prior"]

    def __init__(
        self,
        unet: UNet2DModel,
        neural_operator: ModelMixin | None,
        scheduler: SchedulerMixin,
        default_strength: float = 1.0,
        residual: bool = False,
        default_eta: float = 0.0,
        default_data_consistency_steps: int = 0,
        uncertainty_error_bound_90: dict[str, Any] | list[dict[str, Any]] | None = None,
    ):
        super().__init__()
        in_channels, out_channels = unet.config.get("in_channels"), unet.config.get("out_channels")
        if out_channels != 3 or in_channels != 6:
            raise ValueError(
                f"`unet` takes {in_channels} input and {out_channels} output channels; a NeurOp-Diff UNet takes the "
                "noisy image and the prior (6 channels) and predicts RGB (3): this is not a NeurOp-Diff UNet."
            )
        own_aligned_weights(unet)
        own_aligned_weights(neural_operator)
        self.register_modules(unet=unet, neural_operator=neural_operator, scheduler=scheduler)
        if isinstance(default_strength, bool) or not isinstance(default_strength, numbers.Real):
            raise TypeError(f"`default_strength` must be a number in (0, 1], got {default_strength!r}.")
        if not isinstance(residual, bool):
            raise TypeError(f"`residual` must be a bool, got {residual!r}.")
        self.register_to_config(default_eta=check_eta(default_eta, "default_eta"))
        self.register_to_config(
            default_data_consistency_steps=check_back_projection_steps(
                default_data_consistency_steps, "default_data_consistency_steps"
            )
        )
        self.register_to_config(
            default_strength=check_strength(default_strength, "default_strength"), residual=residual
        )
        # Its fields are checked with the folder (loading.check_pipeline_folder) and where it is used
        # (uncertainty_calibration); the pipeline module stays free of that import (it is exported self-contained).
        if uncertainty_error_bound_90 is not None and not isinstance(uncertainty_error_bound_90, (dict, list)):
            kind = type(uncertainty_error_bound_90).__name__
            raise TypeError(f"`uncertainty_error_bound_90` must be a dict, a list of dicts or None, got {kind}.")
        self.register_to_config(uncertainty_error_bound_90=uncertainty_error_bound_90)

    def save_pretrained(self, save_directory: str | os.PathLike, hub_ready: bool = False, **kwargs) -> None:
        """Save the pipeline (safetensors); with ``hub_ready=True`` in the self-contained remote-code layout.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write.
            hub_ready (`bool`, defaults to `False`): also write the pipeline and operator code into the folder, so
                that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it where this
                package is not installed.
            kwargs (`Any`, *optional*): passed to [`DiffusionPipeline.save_pretrained`] (``safe_serialization`` is
                always ``True``).
        """
        kwargs["safe_serialization"] = True
        super().save_pretrained(save_directory, **kwargs)
        if hub_ready:
            make_hub_ready(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        hub_ready: bool = True,
        model_card: str | os.PathLike | None = None,
    ) -> str:
        """Upload the pipeline to the Hub, in the hub-ready layout by default.

        Args:
            repo_id (`str`): the Hub repository (created if missing).
            commit_message (`str`, *optional*): message of the upload commit.
            private (`bool`, *optional*): create the repository as private.
            token (`str`, *optional*): a Hub token; by default the one of the environment / ``huggingface-cli
                login`` (never logged).
            create_pr (`bool`, defaults to `False`): open a pull request instead of committing to main.
            hub_ready (`bool`, defaults to `True`): upload the self-contained remote-code layout (see
                [`save_pretrained`]).
            model_card (`str` or `os.PathLike`, *optional*): a README.md to upload with it (e.g. the one training
                wrote).

        Returns:
            `str`: The URL of the commit.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, hub_ready=hub_ready)
            if model_card is not None:
                shutil.copyfile(model_card, Path(tmp) / "README.md")
            return push_folder_to_hub(
                tmp,
                repo_id,
                hub_ready=False,  # already in the chosen layout
                private=private,
                commit_message=commit_message or "Upload NeurOp-Diff pipeline",
                ignore_patterns=(),
                token=token,
                create_pr=create_pr,
            )

    def to(self, *args, **kwargs) -> "NeurOpDiffPipeline":
        """[`DiffusionPipeline.to`], except that the neural operator stays in float32 (bit for bit) when a reduced
        dtype is asked for: see the class docstring. Moving to a device moves everything.

        Example:
            >>> import torch
            >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
            >>> pipe = build_pipeline("tiny").to(dtype=torch.bfloat16)
            >>> pipe.unet.dtype, pipe.neural_operator.dtype
            (torch.bfloat16, torch.float32)
        """
        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        operator = self.neural_operator
        keep = None
        if operator is not None and dtype is not None and dtype != torch.float32 and operator.dtype == torch.float32:
            keep = {name: value.detach().clone() for name, value in operator.state_dict().items()}
        # diffusers warns on every dtype cast of a model that "modules should be kept in float32": handled here.
        modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
        level = modeling_logger.level
        modeling_logger.setLevel(logging.ERROR)
        try:
            super().to(*args, **kwargs)
            if keep is not None:
                operator.to(torch.float32)
                operator.load_state_dict(keep)
        finally:
            modeling_logger.setLevel(level)
        return self

    @property
    def residual(self) -> bool:
        """Whether the diffused variable is ``HR - prior`` (``config.residual``; ``False`` for pipelines saved before
        the option existed)."""
        return bool(self.config.get("residual", False))

    @property
    def downsampling_factor(self) -> int:
        """HR sizes are padded to a multiple of this ([`unet_downsampling_factor`]) and cropped back."""
        return unet_downsampling_factor(self.unet)

    def _predict_noise(
        self,
        x: torch.Tensor,
        region: tuple[slice, slice],
        prior: torch.Tensor,
        level: torch.Tensor,
        progress_bar: Any = None,
    ) -> torch.Tensor:
        """The UNet's noise prediction for the region ``region`` of the image (the whole image when untiled).

        The UNet runs in its own dtype (e.g. bfloat16); its input and output are cast, the sampler stays in float32.

        The UNet gets an input at least twice the downsampling factor wide (replicated at the right, the extra
        columns cropped from its prediction), so that its deepest level is never one column wide: there oneDNN's
        bfloat16 kernels compute a strided convolution wrongly (garbage, often NaN; measured with torch 2.13 on an AMX
        CPU), which a thin image (an output a few pixels wide) reached under ``--dtype auto``. Widening every precision
        alike keeps a thin image's bfloat16 output close to its float32 one; wider inputs are unchanged.
        """
        unet_input = torch.cat([x, prior[:, :, region[0], region[1]]], dim=1)
        width = unet_input.shape[-1]
        widen = 2 * self.downsampling_factor - width
        if widen > 0:
            unet_input = F.pad(unet_input, (0, widen, 0, 0), mode="replicate")  # before the cast: no bf16 CPU kernel
        out = self.unet(unet_input.to(self.unet.dtype), level).sample.float()[..., :width]
        if progress_bar is not None:
            progress_bar.update()
        return out

    @torch.no_grad()
    def compute_prior(
        self, image: torch.Tensor, output_size: tuple[int, int], chunk_size: int | None = None
    ) -> torch.Tensor:
        """The conditioning prior at ``output_size`` for ``image`` (``(B, 3, h, w)`` in ``[-1, 1]``).

        Args:
            image (`torch.Tensor`): LR images in ``[-1, 1]``.
            output_size (`tuple[int, int]`): ``(height, width)`` of the HR output.
            chunk_size (`int`, *optional*): output pixels per chunk of the streamed operator (``None``: its default).

        Returns:
            `torch.Tensor`: the prior ``(B, 3, height, width)``, in the ``[-1, 1]`` space of ``image`` (the bicubic
            prior without a neural operator).
        """
        if self.neural_operator is None:
            return bicubic_prior(image, output_size)
        image = image.to(self.neural_operator.dtype)
        return self.neural_operator(image, output_size, chunk_size=chunk_size).sample

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict[str, Any]:
        """The keyword arguments of ``scheduler.step`` that not every scheduler takes (diffusers' name and role).

        Args:
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): the noise of stochastic steps.
            eta (`float`): DDIM's eta, passed only to schedulers that take it.

        Returns:
            `dict[str, Any]`: ``eta`` and / or ``generator``, as the scheduler's ``step`` accepts them.
        """
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def get_timesteps(self, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """The timesteps that a sampling `strength` runs (diffusers' img2img ``get_timesteps``).

        The last ``strength_steps(strength, num_inference_steps)`` of the scheduler's timesteps (all of them for
        ``strength=1``); call ``scheduler.set_timesteps`` first.

        Args:
            num_inference_steps (`int`): the scheduler's number of timesteps.
            strength (`float`): in ``(0, 1]``.

        Returns:
            `tuple[torch.Tensor, int]`: the timesteps to run and their number.
        """
        timesteps = self.scheduler.timesteps
        if strength < 1.0:
            begin = len(timesteps) - strength_steps(strength, num_inference_steps) * self.scheduler.order
            timesteps = timesteps[begin:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(begin)
        return timesteps, len(timesteps)

    check_inputs = staticmethod(check_call_inputs)

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        scale: float | None = None,
        output_size: tuple[int, int] | None = None,
        num_inference_steps: int = 50,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["NeurOpDiffPipeline", int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        chunk_size: int | None = None,
        max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS,
        recompute_prior_every_step: bool = False,
        tile_size: int | None = DEFAULT_TILE_SIZE,
        tile_overlap: int | None = None,
        prior_only: bool = False,
        strength: float | None = None,
        prior: torch.Tensor | None = None,
        num_samples: int | None = None,
        data_consistency_steps: int | None = None,
        uncertainty_sigma: float = DEFAULT_UNCERTAINTY_SIGMA,
        flip_samples: bool = True,
    ) -> NeurOpDiffPipelineOutput | tuple:
        r"""Super-resolve ``image`` by ``scale`` or to ``output_size``.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them): a PIL image (any 8-bit mode;
                converted to RGB), a numpy array (HWC / NHWC, uint8 or float in ``[0, 1]``), a torch tensor (CHW /
                NCHW in ``[0, 1]``), or a list of them (a batch of one size).
            scale (`float`, *optional*): the upscaling factor, a finite real >= 1 (e.g. 3.7); the output is
                ``round(h*s) x round(w*s)``.
            output_size (`tuple[int, int]`, *optional*): ``(height, width)`` of the output instead of ``scale``
                (non-square scales allowed).
            num_inference_steps (`int`, defaults to `50`): denoising steps (paper: 30, 50 or 100).
            eta (`float`, *optional*): DDIM's eta in ``[0, 1]`` (0 = deterministic DDIM; ignored by schedulers
                without it); ``None``: the pipeline's ``config.default_eta`` (0.0 unless the model's trainer chose
                another value).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): torch generator(s) for the initial
                noise (and DDPM's noise): same seed, same output.
            output_type (`str`, defaults to ``"pil"``): ``"pil"`` (list of PIL images), ``"np"`` (NHWC float in
                ``[0, 1]``) or ``"pt"`` (NCHW).
            return_dict (`bool`, defaults to `True`): return a [`NeurOpDiffPipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called as ``fn(pipe, step_index, timestep,
                callback_kwargs)`` after each step; it may return a dict replacing tensors named in
                ``callback_on_step_end_tensor_inputs``.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors passed to the callback
                (``"latents"``, ``"prior"``); ``None``: ``["latents"]``.
            chunk_size (`int`, *optional*): output pixels per chunk of the streamed neural operator (``None``: its
                default).
            max_output_pixels (`int` or `None`, defaults to `DEFAULT_MAX_OUTPUT_PIXELS`): pixel budget of one output
                image; larger requests are refused before any work. ``None``: no limit (the sides are still at most
                [`~image_processing.MAX_OUTPUT_SIDE`]).
            recompute_prior_every_step (`bool`, defaults to `False`): recompute the prior at every step, as the
                authors' code does (slower, same result).
            tile_size (`int` or `None`, defaults to `DEFAULT_TILE_SIZE`): outputs larger than this on a side are
                denoised in overlapping tiles of this size whose noise predictions are blended smoothly at every step
                (no seams; the prior stays global and exact). A multiple of the UNet's downsampling factor; ``None``
                never tiles. An output that fits one tile is computed exactly as without tiling.
            tile_overlap (`int`, *optional*): minimum overlap of neighbouring tiles, in pixels (at most
                ``tile_size // 2``); ``None``: ``min(64, tile_size // 4)``.
            prior_only (`bool`, defaults to `False`): return the neural-operator prior itself (clamped to the image
                range), without diffusion: the continuous-scale regression output (SRNO), fast and deterministic.
            strength (`float`, *optional*): the fraction of the ``num_inference_steps`` timesteps that is run, in
                ``(0, 1]``; ``None``: the pipeline's ``config.default_strength`` (saved with it; 1.0 unless the
                model's trainer chose another value). ``1.0`` (the paper) starts from pure noise. Below 1 -- not in
                the paper -- sampling starts from the *prior* diffused to the first kept timestep (``sqrt(gamma) *
                prior + sqrt(1 - gamma) * noise``; for a residual pipeline the residual estimate zero diffused) and
                runs only the last ``round(strength * num_inference_steps)`` steps: the "come closer, diffuse
                faster" start of Chung et al. (CVPR 2022), faster, and forgiving to a denoiser that is weak at high
                noise levels.
            prior (`torch.Tensor`, *optional*): a precomputed prior ``(B, 3, height, width)`` in ``[-1, 1]`` at the
                output size, used instead of the neural operator's (the scene engine passes each window's prior,
                computed at the window's coordinates in the whole scene); ``None``: computed from ``image``.
            num_samples (`int`, *optional*): draw this many samples of each image (2 to 64; not in the paper) and
                return their per-pixel mean as ``images`` and their spread as ``uncertainty`` (the sample standard
                deviation, ``ddof=1``, over the samples before clamping, on the ``[0, 1]`` scale, averaged over the
                channels, ``(B, H, W)``). Sample ``k`` of image ``b`` is what a separate call with
                ``generator=torch.Generator().manual_seed(seeds[b * N + k])`` returns before clamping (on the flipped
                input with `flip_samples`, padded to the UNet's factor at the input's bottom / right where a side is
                not a multiple of it), the seeds drawn from ``generator`` by
                [`~pipelines.uncertainty.sample_seeds`]; the prior is computed once (per flip) and the samples are
                denoised as one batch (memory grows with ``N``).
                ``None`` (default): one sample, no map; 1 is refused (one sample has no spread). Ignored with
                ``prior_only``.
            uncertainty_sigma (`float`, defaults to `2.0`): with ``num_samples``, the variance of the samples is
                pooled over a Gaussian of this sigma in output pixels
                ([`~pipelines.uncertainty.pool_uncertainty`]; not in the paper); ``0``: each pixel's own spread.
                Pooling makes the map a better predictor of the real error (README, "Can I trust the detail?").
            flip_samples (`bool`, defaults to `True`): with ``num_samples``, draw sample ``k`` of each image on the
                input flipped by [`~pipelines.uncertainty.flip`] code ``k % 4`` (none, left-right, up-down, both:
                the prior and the denoising in that frame) and flip it back, so that the spread also holds how much
                the model disagrees with itself under flips (test-time augmentation; not in the paper) and the mean
                is a flip ensemble. Sample ``k`` is then a separate call on the flipped input, flipped back (with
                a given ``prior``, the flipped prior: the operator is not run again, as in the scene engine). The
                default, chosen by measurement (README, "Can I trust the detail?"); ``False``: seeded samples of the
                input as it is.
            data_consistency_steps (`int`, *optional*): iterations of back-projection of the output onto the
                images whose antialiased-bicubic downsampling is the input
                ([`~neurop_diff_diffusers.pipelines.data_consistency.back_project`]; not in the paper), 0 to 100; 0:
                off (the paper). ``None``: the pipeline's ``default_data_consistency_steps`` (0 unless the model ships
                another value; the embedded model's is in its ``model_index.json``).
                About 10 bring the output's downsampling to within a hundredth of a level of the input (see the
                README, "Can I trust the detail?"). Ignored with ``prior_only``.

        Returns:
            [`~pipelines.uncertainty.NeurOpDiffPipelineOutput`] or `tuple`: the output with ``.images`` in the
            requested ``output_type`` (and ``.uncertainty`` with ``num_samples``); with ``return_dict=False``, the
            tuple ``(images,)`` (``(images, uncertainty)`` with ``num_samples``).

        Raises:
            ValueError: before any work, for an invalid ``image`` (see [`~image_processing.preprocess_images`]), both
                or neither of ``scale`` and ``output_size``, an unknown ``output_type``, ``num_inference_steps``,
                ``eta``, ``strength``, ``tile_size`` or ``tile_overlap`` out of range, an output larger than
                ``max_output_pixels``, an unknown name in ``callback_on_step_end_tensor_inputs``, or a list of
                ``generator`` whose length is not the batch size.
            TypeError: for an ``image`` of an unsupported type or dtype, a ``scale`` that is not a real number, or a
                ``num_inference_steps`` that is not an int.

        Example:
            >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
            >>> import numpy as np
            >>> pipe = build_pipeline("tiny")
            >>> lr = np.zeros((16, 16, 3), np.uint8)
            >>> pipe(lr, output_size=(40, 24), output_type="np", num_inference_steps=2).images.shape
            (1, 40, 24, 3)
        """
        # 1. Check inputs: everything, before any work (the pipeline's defaults filled in).
        lr = preprocess_images(image)
        out_size = resolve_output_size(tuple(lr.shape[-2:]), scale, output_size)
        call = self._check_call(
            lr.shape[0],
            out_size,
            num_inference_steps=num_inference_steps,
            eta=eta,
            generator=generator,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_output_pixels=max_output_pixels,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            strength=strength,
            prior=prior,
            num_samples=num_samples,
            data_consistency_steps=data_consistency_steps,
            uncertainty_sigma=uncertainty_sigma,
            flip_samples=flip_samples,
        )
        device = self._execution_device
        batch_size = lr.shape[0]

        # 2. Preprocess: the input in [-1, 1] on the device, in each flip's frame (with flip_samples).
        lr = (lr * 2.0 - 1.0).to(device)
        samples = 1 if prior_only else (call.num_samples or 1)
        flips = min(samples, 4) if flip_samples and samples > 1 else 1
        lr_frames = flip_each(lr.repeat_interleave(flips, dim=0), flips) if flips > 1 else lr

        # 3. Prior: once, at the HR size (once per flip), or the given one.
        given_prior = prior is not None
        prior = self._prepare_prior(lr_frames, prior, out_size, flips, chunk_size, device)
        if prior_only:
            return self._finish(prior, output_type, return_dict)
        frame, lr_samples, generator, prior, batch_size = self._expand_samples(
            prior, lr_frames, generator, batch_size, samples, flips
        )
        prior = self._pad_to_unet(prior, out_size, samples, flips)

        # 4. Timesteps.
        self.scheduler.set_timesteps(call.num_inference_steps, device=device)
        timesteps, _ = self.get_timesteps(call.num_inference_steps, call.strength)

        # 5. Latents: noise, or the prior diffused to the first timestep (strength < 1).
        latents = self.prepare_latents(prior, timesteps, call.strength, generator, batch_size, device)

        # 6. Denoising loop (in overlapping tiles when the output is larger than a tile).
        recompute = (
            (lr_frames, frame, out_size, chunk_size, samples, flips)
            if recompute_prior_every_step and not given_prior
            else None
        )
        latents, prior = self._denoise(
            latents, prior, timesteps, call, generator, callback_on_step_end, batch_size, device, recompute
        )

        # 7. Data consistency: the prior added back (residual diffusion), each sample back in the input's
        # orientation, the padding cropped, back-projection.
        sample = latents + prior if self.residual else latents
        if flips > 1:
            sample = flip_each(sample, samples)
            lr_samples = lr.repeat_interleave(samples, dim=0)
        sample = sample[:, :, : out_size[0], : out_size[1]]
        if call.data_consistency_steps:
            sample = back_project(sample, lr_samples.float(), call.data_consistency_steps)

        # 8. Postprocess: the samples reduced to their mean and spread; convert.
        uncertainty = None
        if samples > 1:
            sample, uncertainty = reduce_samples(sample, samples)
            uncertainty = pool_uncertainty(uncertainty, call.uncertainty_sigma)
        return self._finish(sample, output_type, return_dict, uncertainty)

    def _check_call(
        self,
        batch_size: int,
        out_size: tuple[int, int],
        *,
        num_inference_steps: Any,
        eta: Any,
        generator: Any,
        output_type: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
        max_output_pixels: Any,
        tile_size: Any,
        tile_overlap: Any,
        strength: Any,
        prior: Any,
        num_samples: Any,
        data_consistency_steps: Any,
        uncertainty_sigma: Any,
        flip_samples: Any,
    ) -> CallArguments:
        """Step 1 of [`__call__`]: every argument but the image checked, the pipeline's defaults filled in."""
        tensor_inputs = (
            ["latents"] if callback_on_step_end_tensor_inputs is None else callback_on_step_end_tensor_inputs
        )
        if tile_overlap is None:
            tile_overlap = min(DEFAULT_TILE_OVERLAP, tile_size // 4) if isinstance(tile_size, numbers.Integral) else 0
        if eta is None:
            eta = self.config.get("default_eta", 0.0)
        check_output_type(output_type)
        self.check_inputs(
            num_inference_steps,
            eta,
            max_output_pixels,
            out_size,
            self.scheduler.config.num_train_timesteps,
            tensor_inputs,
            self._callback_tensor_inputs,
            tile_size,
            tile_overlap,
            self.downsampling_factor,
        )
        strength = check_strength(self.config.get("default_strength", 1.0) if strength is None else strength)
        check_generator(generator, batch_size)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}.")
        if tile_size is not None:
            tile_size, tile_overlap = int(tile_size), int(tile_overlap)
        num_samples = check_num_samples(num_samples)
        uncertainty_sigma = check_uncertainty_sigma(uncertainty_sigma)
        if not isinstance(flip_samples, bool):
            raise TypeError(f"`flip_samples` must be a bool, got {flip_samples!r}.")
        if data_consistency_steps is None:
            data_consistency_steps = self.config.get("default_data_consistency_steps", 0)
        data_consistency_steps = check_back_projection_steps(data_consistency_steps)
        if prior is not None and not isinstance(prior, torch.Tensor):
            raise TypeError(f"`prior` must be a torch.Tensor or None, got {type(prior).__name__}.")
        if prior is not None and tuple(prior.shape) != (batch_size, 3, *out_size):
            raise ValueError(f"`prior` must have shape {(batch_size, 3, *out_size)}, got {tuple(prior.shape)}.")
        return CallArguments(
            tensor_inputs=tensor_inputs,
            eta=eta,
            strength=strength,
            num_inference_steps=int(num_inference_steps),
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            num_samples=num_samples,
            uncertainty_sigma=uncertainty_sigma,
            data_consistency_steps=data_consistency_steps,
        )

    def _prepare_prior(
        self,
        lr_frames: torch.Tensor,
        prior: torch.Tensor | None,
        out_size: tuple[int, int],
        flips: int,
        chunk_size: int | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Step 3 of [`__call__`]: the given prior (in each flip's frame) or the one computed from ``lr_frames``."""
        if prior is None:
            return self.compute_prior(lr_frames, out_size, chunk_size=chunk_size).float()
        prior = prior.to(device=device, dtype=torch.float32)
        return flip_each(prior.repeat_interleave(flips, dim=0), flips) if flips > 1 else prior

    def _expand_samples(
        self, prior: torch.Tensor, lr_frames: torch.Tensor, generator: Any, batch_size: int, samples: int, flips: int
    ) -> tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor, int]:
        """N samples per image as one batch: the prior computed once (per flip), one generator per sample; sample k
        of image b takes the frame (flip) k % flips of that image. Returns the frame of each sample, its input, the
        generators, the prior per sample and the batch size."""
        sample_index = torch.arange(batch_size * samples, device=prior.device)
        frame = (sample_index // samples) * flips + (sample_index % samples) % flips
        lr_samples = lr_frames[frame.to(lr_frames.device)]
        if samples > 1:
            generator = sample_generators(generator, batch_size, samples)
            prior = prior[frame]
            batch_size *= samples
        return frame, lr_samples, generator, prior, batch_size

    def _pad_to_unet(
        self, prior: torch.Tensor, out_size: tuple[int, int], samples: int = 1, flips: int = 1
    ) -> torch.Tensor:
        """The prior padded (replicated edges) to a multiple of the UNet's downsampling factor, at the bottom /
        right of the input's orientation: a flipped sample is padded on the side that is the bottom / right once
        flipped back, so that the padding touches the same borders of every sample (the spread at the borders does
        not depend on the flips)."""
        pad_h, pad_w = (-out_size[0]) % self.downsampling_factor, (-out_size[1]) % self.downsampling_factor
        if not (pad_h or pad_w):
            return prior
        if flips == 1:
            return F.pad(prior, (0, pad_w, 0, pad_h), mode="replicate")
        return flip_each(F.pad(flip_each(prior, samples), (0, pad_w, 0, pad_h), mode="replicate"), samples)

    def prepare_latents(
        self,
        prior: torch.Tensor,
        timesteps: torch.Tensor,
        strength: float,
        generator: torch.Generator | list[torch.Generator] | None,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Step 5 of [`__call__`]: the initial latents, float32 noise of the (padded) prior's shape scaled by the
        scheduler, or with ``strength < 1`` the prior (zero for a residual pipeline) diffused to ``timesteps[0]``."""
        latents = randn_tensor(prior.shape, generator=generator, device=device, dtype=torch.float32)
        if strength < 1.0:
            start = torch.zeros_like(prior) if self.residual else prior
            return self.scheduler.add_noise(start, latents, timesteps[:1].repeat(batch_size))
        return latents * self.scheduler.init_noise_sigma

    def _denoise(
        self,
        latents: torch.Tensor,
        prior: torch.Tensor,
        timesteps: torch.Tensor,
        call: CallArguments,
        generator: Any,
        callback_on_step_end: Callable | None,
        batch_size: int,
        device: torch.device,
        recompute: tuple[torch.Tensor, torch.Tensor, tuple[int, int], int | None, int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 6 of [`__call__`]: the denoising loop (the progress bar counts UNet calls); ``recompute``: the
        inputs of the prior recomputed at every step (``recompute_prior_every_step``)."""
        alphas_cumprod = self.scheduler.alphas_cumprod.cpu()
        step_kwargs = self.prepare_extra_step_kwargs(generator, call.eta)
        tile = max(prior.shape[-2:]) if call.tile_size is None else call.tile_size
        tiles = num_tiles(tuple(prior.shape[-2:]), tile, call.tile_overlap)
        with self.progress_bar(total=len(timesteps) * tiles) as progress_bar:
            for i, t in enumerate(timesteps):
                if recompute is not None and i > 0:
                    lr_frames, frame, out_size, chunk_size, samples, flips = recompute
                    prior = self.compute_prior(lr_frames, out_size, chunk_size=chunk_size).float()[frame]
                    prior = self._pad_to_unet(prior, out_size, samples, flips)
                model_input = self.scheduler.scale_model_input(latents, t)
                level = noise_level(alphas_cumprod, t).to(device=device, dtype=self.unet.dtype).expand(batch_size)
                denoise = functools.partial(self._predict_noise, prior=prior, level=level, progress_bar=progress_bar)
                noise_pred = tiled_apply(denoise, model_input, tile, call.tile_overlap)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    local_tensors = {"latents": latents, "prior": prior}
                    callback_kwargs = {k: local_tensors[k] for k in call.tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_tensor(callback_outputs, "latents", latents)
                    prior = callback_tensor(callback_outputs, "prior", prior)
        return latents, prior

    def _finish(
        self, sample: torch.Tensor, output_type: str, return_dict: bool, uncertainty: torch.Tensor | None = None
    ) -> NeurOpDiffPipelineOutput | tuple:
        try:
            check_finite_output(sample)  # NaN / inf would become a black or white image without a word
            images = postprocess_images(sample, output_type)
        finally:
            self.maybe_free_model_hooks()
        if uncertainty is not None and output_type != "pt":
            uncertainty = uncertainty.cpu().numpy()
        if not return_dict:
            return (images,) if uncertainty is None else (images, uncertainty)
        return NeurOpDiffPipelineOutput(images=images, uncertainty=uncertainty)
