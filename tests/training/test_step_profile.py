"""The step profile's arithmetic against hand-computed values: kernel classes, busy and idle time,
MFU, and the attention FLOPs a model's forward pass runs."""

from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from s2s.models.config import tiny
from s2s.models.duplex import DuplexModel
from s2s.training.step_profile import (
    KernelSpan,
    StepFlops,
    breakdown,
    classify_kernel,
    count_attention_flops,
    covered_length,
    datasheet_peak_tflops,
    format_breakdown,
    kernels_and_window,
    mfu,
)


@pytest.mark.parametrize(
    ("name", "category"),
    [
        # Our CuTe kernels' symbols (from their sm_90a cubins): the DSL's "cutlass" prefix, then the
        # kernel method and the class with its module path.
        (
            "kernel_cutlass_kernel_s2sattentioncuteforward_sm90ChunkAttentionForwardSm90_object_at__0",
            "attention",
        ),
        (
            "kernel_cutlass_keys_kernel_s2sattentioncutebackward_dkdv_sm90ChunkAttentionBackwardDkDvSm90_0",
            "attention",
        ),
        (
            "kernel_cutlass_dq_kernel_s2sattentioncutebackward_dq_sm90ChunkAttentionBackwardDqSm90_object_0",
            "attention",
        ),
        (
            "kernel_cutlass_kernel_s2sattentioncutebackward_prologue_sm90BackwardPrologueSm90_object_at__0",
            "attention",
        ),
        ("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_0", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", "attention"),
        ("triton_tem_fused_flex_attention_backward_3", "attention"),
        ("triton_tem_fused_0", "attention"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTN", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        (
            "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>",
            "matmul",
        ),
        ("triton_tem_fused_addmm_1", "matmul"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float>>",
            "optimizer",
        ),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>",
            "elementwise/other",
        ),
        ("Memcpy HtoD (Pageable -> Device)", "elementwise/other"),
    ],
)
def test_classify_kernel(name, category):
    assert classify_kernel(name) == category


def test_covered_length_counts_overlaps_once():
    assert covered_length([(0, 10), (5, 15), (20, 30), (30, 31)]) == 26
    assert covered_length([]) == 0


def test_breakdown_of_a_fake_profile():
    """Two steps in a 100 us window: attention 30, matmul 25 (of which 5 overlap attention on
    another stream), optimizer 10, elementwise 5, a kernel half outside the window clipped to 5."""
    kernels = [
        KernelSpan("kernel_cutlass_kernel_s2sattentioncute_fwd", 0, 20),
        KernelSpan("nvjet_tst_gemm", 15, 30),  # overlaps the attention kernel by 5
        KernelSpan("vectorized_elementwise_kernel", 40, 45),
        KernelSpan("kernel_cutlass_kernel_s2sattentioncute_bwd", 50, 60),
        KernelSpan("sm90_xmma_gemm", 60, 70),
        KernelSpan("multi_tensor_apply_kernel<FusedAdamMathFunctor>", 80, 90),
        KernelSpan("elementwise_left_over", 95, 105),  # clipped to [95, 100)
        KernelSpan("before_the_window", -20, -10),  # not counted
    ]
    b = breakdown(kernels, window=(0, 100), steps=2)
    assert b.category_us == {"attention": 30, "matmul": 25, "optimizer": 10, "elementwise/other": 10}
    assert b.busy_us == 30 + 5 + 20 + 10 + 5  # union: [0,30) [40,45) [50,70) [80,90) [95,100)
    assert b.idle_us == 30
    assert b.per_step_ms("attention") == pytest.approx(0.015)
    assert b.per_step_ms("idle") == pytest.approx(0.015)
    assert b.share("matmul") == pytest.approx(0.25)
    assert b.top_kernels["attention"][0] == ("kernel_cutlass_kernel_s2sattentioncute_fwd", 20)
    table = format_breakdown({"cute": b})
    assert "| cute | 0.1 | 0.0 (30%) | 0.0 (25%) | 0.0 (10%) | 0.0 (10%) | 0.0 (30%) |" in table


def _event(name, start, end, device, annotation=False, kind="kernel"):
    return SimpleNamespace(
        name=name,
        time_range=SimpleNamespace(start=start, end=end),
        device_type=device,
        is_user_annotation=annotation,
        activity_type=kind,
    )


def test_kernels_and_window_from_profiler_events():
    """Kernels are the device events that are not annotations; the window runs from the first
    step's host start to the later of the last step's host end and the last kernel's end."""
    events = [
        _event("train_step", 10, 50, DeviceType.CPU, annotation=True),
        _event("aten::mm", 12, 14, DeviceType.CPU),
        _event("train_step", 50, 90, DeviceType.CPU, annotation=True),
        _event("train_step", 20, 120, DeviceType.CUDA, annotation=True),  # kineto's GPU mirror
        _event("gemm_a", 20, 40, DeviceType.CUDA),
        _event("gemm_b", 95, 130, DeviceType.CUDA),
        _event("Stream Sync", 40, 95, DeviceType.CUDA, kind="cuda_sync"),  # a host wait, no work
    ]
    kernels, window = kernels_and_window(events, "train_step")
    assert [k.name for k in kernels] == ["gemm_a", "gemm_b"]
    assert window == (10, 130)
    with pytest.raises(ValueError, match="record_function"):
        kernels_and_window(events[1:2], "train_step")


def test_kernels_and_window_on_a_real_cpu_profile():
    """The torch.profiler API the bench script reads: on the CPU there are no kernels, only the
    step ranges, and the whole window is idle."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("train_step"):
                torch.ones(64, 64) @ torch.ones(64, 64)
    kernels, (start, end) = kernels_and_window(prof.events(), "train_step")
    assert kernels == []
    b = breakdown(kernels, (start, end), steps=2)
    assert b.wall_us == end - start > 0
    assert b.idle_us == b.wall_us


def test_mfu_and_flops_by_hand():
    flops = StepFlops(parameters=100_000_000, frames=10_000, attention_forward=2 * 10**11)
    assert flops.dense == 6e12
    assert flops.attention == 7e11  # forward + 2.5x backward
    assert flops.total == 6.7e12
    # 6.7 TFLOP in 20 ms is 335 TFLOP/s; over a 989 peak that is 33.9%.
    assert mfu(flops.total, 0.020, 989.0) == pytest.approx(335 / 989)


def test_datasheet_peaks_by_device_name():
    assert datasheet_peak_tflops("NVIDIA H200") == 989
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert datasheet_peak_tflops("NVIDIA H100 PCIe") == 756
    assert datasheet_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert datasheet_peak_tflops("NVIDIA GeForce RTX 4090") is None


def test_attention_flops_of_a_forward_pass_by_hand():
    """The tiny model (4 heads of 32, 4 encoder and 4 decoder layers: 4 + 4 self and 4 cross
    attention calls) on two dialogues of 12 and 8 frames, chunk 4 (padded: lengths differ).

    Visible pairs of a 12-frame sequence under chunk 4: rows 0-3 see 4 keys, 4-7 see 8, 8-11 see
    12: 4 * (4 + 8 + 12) = 96; of the 8-frame one: 4 * (4 + 8) = 48. Per call:
    4 * head_dim 32 * heads 4 * 144 pairs = 73,728 FLOPs; 12 calls: 884,736."""
    config = tiny()
    assert (config.heads, config.head_dim, config.encoder_layers, config.decoder_layers) == (4, 32, 4, 4)
    model = DuplexModel(config).eval()
    lengths = torch.tensor([12, 8])
    user_mel = torch.randn(2, 4 * 12, config.n_mels)
    feedback = torch.randn(2, 12, config.feedback_dim)
    with torch.no_grad(), count_attention_flops() as counted:
        model(user_mel, feedback, lengths=lengths, chunk=4)
    assert counted.calls == 12
    assert counted.flops == 12 * 4 * 32 * 4 * (96 + 48)
    # Counting leaves the model's attention as it was.
    import s2s.models.attention as layers
    from s2s.models.attention import attend

    assert layers.attend is attend
