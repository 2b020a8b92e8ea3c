"""`dtype="auto"`: the precision picked per device (CPU with / without bfloat16 units, ISA capped by the environment,
CUDA with / without bfloat16), the one-line warning for an emulated bfloat16, and the /proc/cpuinfo parsing. The
machine is never asked: every case is passed in (see `tests/test_optimization.py` for the CLI and the pipeline)."""

from __future__ import annotations

import pytest

from neurop_diff_diffusers.runtime.hardware import (
    EMULATED_BF16_SLOWDOWN,
    DeviceProbe,
    DtypeChoice,
    auto_dtype,
    choose_dtype,
    onednn_isa_cap,
    read_cpuinfo,
    slow_precision_warning,
)

ZEN4 = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
ZEN3 = frozenset({"fpu", "avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "capability", "env", "dtype", "words"),
    [
        (ZEN4, "AVX512", {}, "bfloat16", "computes bfloat16 natively (avx512_bf16; torch capability AVX512)"),
        (SAPPHIRE_RAPIDS, "AVX512", {}, "bfloat16", "avx512_bf16 + amx_bf16"),
        (ZEN3, "AVX2", {}, "float32", "no bfloat16 units (no avx512_bf16 / amx_bf16 flag)"),
        (frozenset(), "AVX512", {}, "float32", "flags are unknown"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32", "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off them"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "float32", "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
        (ZEN4, "AVX512", {"DNNL_MAX_CPU_ISA": "avx2"}, "float32", "DNNL_MAX_CPU_ISA=avx2"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": "SOMETHING"}, "float32", "ONEDNN_MAX_CPU_ISA=SOMETHING"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, "bfloat16", "natively"),
        (SAPPHIRE_RAPIDS, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "bfloat16", "natively"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}, "bfloat16", "natively"),
        (ZEN4, "AVX512", {"ONEDNN_MAX_CPU_ISA": ""}, "bfloat16", "natively"),
        (ZEN4, "AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}, "float32", "run at AVX2, set by ATEN_CPU_CAPABILITY=avx2"),
        (ZEN4, "DEFAULT", {}, "float32", "run at DEFAULT, set by torch's build"),
    ],
)
def test_auto_on_a_cpu(flags, capability, env, dtype, words):
    choice = choose_dtype("cpu", cpu_flags=flags, cpu_capability=capability, env=env)
    assert choice.dtype == dtype and words in choice.reason, choice
    assert "\n" not in choice.reason


def test_auto_on_a_gpu_and_elsewhere():
    assert choose_dtype("cuda", cuda_bf16=True, device_name="NVIDIA H200") == DtypeChoice(
        "bfloat16", "this GPU (NVIDIA H200) computes bfloat16 natively"
    )
    no_bf16 = choose_dtype("cuda:1", cuda_bf16=False, device_name="Tesla T4")
    assert no_bf16.dtype == "float16" and "Tesla T4" in no_bf16.reason
    # the CPU's flags do not matter for a GPU, nor the GPU's for the CPU
    assert choose_dtype("cuda", cpu_flags=ZEN3, cpu_capability="AVX2", cuda_bf16=True).dtype == "bfloat16"
    assert choose_dtype("cpu", cpu_flags=ZEN3, cpu_capability="AVX2", cuda_bf16=True).dtype == "float32"
    assert choose_dtype("mps", cpu_flags=ZEN4, cpu_capability="AVX512").dtype == "float32"


def test_onednn_isa_cap():
    assert onednn_isa_cap({}) is None and onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": " "}) is None
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}) is None
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}) == "ONEDNN_MAX_CPU_ISA=AVX2_VNNI"


def test_read_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    assert read_cpuinfo(x86) == ("AMD EPYC 9R14", frozenset({"fpu", "avx2", "avx512_bf16"}))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n")
    assert read_cpuinfo(arm) == ("", frozenset({"fp", "asimd", "sve", "bf16"}))
    assert read_cpuinfo(tmp_path / "missing") == ("", frozenset())
    # an Arm CPU's bf16 is not one of the x86 flags auto trusts: float32 there (not measured)
    assert choose_dtype("cpu", cpu_flags=read_cpuinfo(arm)[1], cpu_capability="SVE256").dtype == "float32"


def test_slow_precision_warning():
    emulated = DtypeChoice("float32", "this CPU has no bfloat16 units (no avx512_bf16 / amx_bf16 flag)")
    native = DtypeChoice("bfloat16", "this CPU computes bfloat16 natively")
    message = slow_precision_warning("bfloat16", "cpu", emulated)
    assert message == (
        f"bfloat16 is emulated here, {EMULATED_BF16_SLOWDOWN} slower than float32 (measured): this CPU has no "
        "bfloat16 units (no avx512_bf16 / amx_bf16 flag); use dtype auto (float32 here) or float32"
    )
    assert slow_precision_warning("bfloat16", "cpu", native) is None
    assert slow_precision_warning("float32", "cpu", emulated) is None
    assert slow_precision_warning("auto", "cpu", emulated) is None
    assert slow_precision_warning("bfloat16", "cuda", emulated) is None


def test_auto_dtype_reads_the_probe_and_the_environment(monkeypatch):
    from neurop_diff_diffusers.runtime import hardware

    monkeypatch.setattr(hardware, "probe_device", lambda device="cpu": DeviceProbe(ZEN4, "AVX512", None, "EPYC"))
    assert auto_dtype("cpu", env={}).dtype == "bfloat16"
    assert auto_dtype("cpu", env={"ONEDNN_MAX_CPU_ISA": "AVX2"}).dtype == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert auto_dtype("cpu").dtype == "float32"  # os.environ by default
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert auto_dtype("cpu").dtype == "bfloat16"


def test_auto_dtype_on_this_machine_is_consistent():
    # whatever this CPU is: a valid choice with a reason, and bfloat16 only where the flags say so
    _, flags = read_cpuinfo()
    choice = auto_dtype("cpu")
    assert choice.dtype in ("float32", "bfloat16") and choice.reason
    if choice.dtype == "bfloat16":
        assert {"avx512_bf16", "amx_bf16"} & flags
