"""What the hardware computes fast: the UNet precision that ``dtype="auto"`` picks on a device, and why.

bfloat16 pays off only where the hardware computes it: on a CPU with bfloat16 units (the ``avx512_bf16`` or
``amx_bf16`` flags: Intel Xeon from Cooper Lake / Sapphire Rapids, AMD from Zen 4) and on CUDA GPUs with bfloat16
(NVIDIA Ampere and later). Elsewhere oneDNN and ATen emulate it, and a bfloat16 UNet is 4.5x (channels-last) to 72x
(contiguous) *slower* than float32 (measured on an AMD EPYC without AVX-512). So ``auto`` is:

- CPU with bfloat16 units, used by both oneDNN (``ONEDNN_MAX_CPU_ISA`` not capped below ``AVX512_CORE_BF16``) and
  ATen (torch's CPU capability ``AVX512``, i.e. ``ATEN_CPU_CAPABILITY`` not capped below ``avx512``): bfloat16;
- any other CPU: float32 (channels-last then is the fast path: ``--channels-last``);
- CUDA GPU with native bfloat16: bfloat16; CUDA GPU without: float16;
- anything else (``mps``, ...): float32 (not measured).

The decision is [`choose_dtype`], a pure function of what [`probe_device`] reads from the machine, so that each case
can be tested on any machine.

Example:
    >>> from neurop_diff_diffusers.runtime.hardware import choose_dtype
    >>> choose_dtype("cpu", cpu_flags=frozenset({"avx2"}), cpu_capability="AVX2", env={}).dtype
    'float32'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags that mean the CPU computes bfloat16 natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN's bfloat16 instructions (upper case; unset or empty: no cap). Any
#: other value caps oneDNN below them (``AVX2``, ``AVX512_CORE``, ...), and an unknown one is taken as a cap too.
ONEDNN_BF16_ISAS = frozenset(
    {
        "ALL",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    }
)
#: The oneDNN variables that cap its instruction set (the second is the older name).
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
#: The slowdown of a bfloat16 UNet on a CPU without bfloat16 units, against float32 (measured on an AMD EPYC without
#: AVX-512, torch 2.13: 28.3 s / 6.3 s per step with channels-last, 452 s / 6.3 s without).
EMULATED_BF16_SLOWDOWN = "4.5x-72x"


class SlowPrecisionWarning(UserWarning):
    """A precision asked for explicitly that this device emulates (bfloat16 on a CPU without bfloat16 units)."""


@dataclass(frozen=True)
class DtypeChoice:
    """The precision chosen for a device, and why.

    Args:
        dtype (`str`): ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        reason (`str`): one line saying what was detected.
    """

    dtype: str
    reason: str


@dataclass(frozen=True)
class DeviceProbe:
    """What [`choose_dtype`] needs to know about a device (read by [`probe_device`]).

    Args:
        cpu_flags (`frozenset[str]`): the CPU's flags (``/proc/cpuinfo``; empty where it cannot be read).
        cpu_capability (`str`): torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``, which honours
            ``ATEN_CPU_CAPABILITY``), e.g. ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``.
        cuda_bf16 (`bool` or `None`): whether the CUDA device computes bfloat16 natively (``None``: not a CUDA device).
        device_name (`str`): the CPU's or GPU's name, for the messages.
    """

    cpu_flags: frozenset[str]
    cpu_capability: str
    cuda_bf16: bool | None = None
    device_name: str = ""


def read_cpuinfo(path: str | os.PathLike = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """The CPU's name and flags from a ``/proc/cpuinfo`` file (Linux); ``("", frozenset())`` where there is none.

    Args:
        path (`str` or `os.PathLike`, defaults to ``"/proc/cpuinfo"``): the file.

    Returns:
        `tuple`: the first ``model name`` and the first ``flags`` (x86) or ``Features`` (Arm) line's words.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "", frozenset()
    name, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        if name and flags is not None:
            break
    return name, flags or frozenset()


def onednn_isa_cap(env: Mapping[str, str]) -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) value that keeps oneDNN off bfloat16, or ``None``.

    Args:
        env (`Mapping[str, str]`): the environment (e.g. ``os.environ``).

    Returns:
        `str` or `None`: ``"NAME=VALUE"`` when the variable caps oneDNN below its bfloat16 instructions.
    """
    for variable in ONEDNN_ISA_VARIABLES:
        value = env.get(variable, "").strip()
        if value:
            return None if value.upper() in ONEDNN_BF16_ISAS else f"{variable}={value}"
    return None


def cpu_bf16_units(cpu_flags: frozenset[str], cpu_capability: str, env: Mapping[str, str]) -> tuple[bool, str]:
    """Whether this CPU's bfloat16 units are used by torch, and why (one line).

    Args:
        cpu_flags (`frozenset[str]`): the CPU's flags (see [`read_cpuinfo`]).
        cpu_capability (`str`): torch's CPU capability (``AVX512`` is needed for its bfloat16 kernels).
        env (`Mapping[str, str]`): the environment (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``).

    Returns:
        `tuple[bool, str]`: ``(used, reason)``.
    """
    units = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags]
    if not units:
        known = f"no {' / '.join(BF16_CPU_FLAGS)} flag" if cpu_flags else "its flags are unknown: no /proc/cpuinfo"
        return False, f"this CPU has no bfloat16 units ({known})"
    cap = onednn_isa_cap(env)
    if cap is not None:
        return False, f"this CPU has {' + '.join(units)} but {cap} keeps oneDNN off them"
    if not cpu_capability.upper().startswith("AVX512"):
        variable = env.get("ATEN_CPU_CAPABILITY")
        why = f"ATEN_CPU_CAPABILITY={variable}" if variable else "torch's build"
        return False, f"this CPU has {' + '.join(units)} but torch's CPU kernels run at {cpu_capability}, set by {why}"
    return True, f"this CPU computes bfloat16 natively ({' + '.join(units)}; torch capability {cpu_capability})"


def choose_dtype(
    device: str = "cpu",
    *,
    cpu_flags: frozenset[str] = frozenset(),
    cpu_capability: str = "DEFAULT",
    cuda_bf16: bool | None = None,
    env: Mapping[str, str] | None = None,
    device_name: str = "",
) -> DtypeChoice:
    """The precision ``dtype="auto"`` picks for a device: a pure function of what is passed (see [`auto_dtype`] for
    this machine's choice).

    Args:
        device (`str`, defaults to ``"cpu"``): ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...
        cpu_flags (`frozenset[str]`): the CPU's flags (for ``cpu``).
        cpu_capability (`str`): torch's CPU capability (for ``cpu``).
        cuda_bf16 (`bool`, *optional*): whether the GPU computes bfloat16 natively (for ``cuda``).
        env (`Mapping[str, str]`, *optional*): the environment (default: empty).
        device_name (`str`): the device's name, for the reason.

    Returns:
        [`DtypeChoice`]: the dtype name and a one-line reason.
    """
    kind = str(device).split(":")[0]
    named = f" ({device_name})" if device_name else ""
    if kind == "cpu":
        native, reason = cpu_bf16_units(cpu_flags, cpu_capability, env or {})
        return DtypeChoice("bfloat16" if native else "float32", reason)
    if kind == "cuda":
        if cuda_bf16:
            return DtypeChoice("bfloat16", f"this GPU{named} computes bfloat16 natively")
        return DtypeChoice("float16", f"this GPU{named} has no native bfloat16; float16 instead")
    return DtypeChoice("float32", f"{kind}: no reduced precision measured on this kind of device")


def probe_device(device: str = "cpu") -> DeviceProbe:
    """Read from this machine what [`choose_dtype`] needs for ``device``.

    Args:
        device (`str`, defaults to ``"cpu"``): the device.

    Returns:
        [`DeviceProbe`].
    """
    import torch

    name, flags = read_cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    if str(device).split(":")[0] == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        with torch.cuda.device(index):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return DeviceProbe(flags, capability, native, torch.cuda.get_device_name(index))
    return DeviceProbe(flags, capability, None, name)


def auto_dtype(device: str = "cpu", env: Mapping[str, str] | None = None) -> DtypeChoice:
    """The precision ``dtype="auto"`` picks on this machine for ``device``, and why.

    Args:
        device (`str`, defaults to ``"cpu"``): the device.
        env (`Mapping[str, str]`, *optional*): the environment (default: ``os.environ``).

    Returns:
        [`DtypeChoice`].

    Example:
        >>> auto_dtype("cpu").dtype in ("float32", "bfloat16")
        True
    """
    probe = probe_device(device)
    return choose_dtype(
        device,
        cpu_flags=probe.cpu_flags,
        cpu_capability=probe.cpu_capability,
        cuda_bf16=probe.cuda_bf16,
        env=os.environ if env is None else env,
        device_name=probe.device_name,
    )


def slow_precision_warning(dtype: str, device: str = "cpu", choice: DtypeChoice | None = None) -> str | None:
    """One line warning that ``dtype``, asked for explicitly, is emulated on ``device`` (else ``None``).

    Args:
        dtype (`str`): the precision asked for.
        device (`str`, defaults to ``"cpu"``): the device.
        choice ([`DtypeChoice`], *optional*): what ``auto`` picks there (default: [`auto_dtype`] of ``device``).

    Returns:
        `str` or `None`: the warning, naming the measured slowdown and the way out.
    """
    if dtype != "bfloat16" or str(device).split(":")[0] != "cpu":
        return None
    choice = choice or auto_dtype(device)
    if choice.dtype == "bfloat16":
        return None
    return (
        f"bfloat16 is emulated here, {EMULATED_BF16_SLOWDOWN} slower than float32 (measured): {choice.reason}; "
        "use dtype auto (float32 here) or float32"
    )
