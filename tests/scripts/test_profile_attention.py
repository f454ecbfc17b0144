"""scripts/profile_attention.py's report from Nsight Compute's CSV pages: the kernel table with
units, and each kernel's main loop found from its instruction counts (small pages written here in
ncu's layout stand in for a profile)."""

import csv
import random

import pytest

STALLS = ["stall_barrier", "stall_wait", "stall_barrier (Not Issued)", "stall_wait (Not Issued)"]
HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed", *STALLS]


@pytest.fixture(scope="module")
def profile(load_script):
    return load_script("profile_attention")


def write_raw(path, kernels):
    metrics = [
        "gpu__time_duration.sum",
        "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    ]
    with path.open("w", newline="") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        out.writerow(["ID", "Kernel Name", "Grid Size", "Block Size", *metrics])
        out.writerow(["", "", "", "", "ms", "%"])
        for i, (name, ms, pct) in enumerate(kernels):
            out.writerow([i, name, "(128, 16, 1)", "(384, 1, 1)", f"{ms:.6f}", f"{pct:.6f}"])


def sass(address, text, executed, barrier, wait):
    return [f"0x7f00{address:08x}", f"      {text}", barrier + wait, executed, barrier, wait, barrier, wait]


def write_source(path, kernels):
    with path.open("w", newline="") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        for name, rows in kernels:
            out.writerow(["Kernel Name", name])
            out.writerow(HEADER)
            out.writerows(rows)


def test_report_names_each_kernel_and_its_main_loop(profile, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    tiles = rng.randint(50, 5000)  # iterations of the main loop (per warp, summed)
    hot_wait = rng.randint(1000, 9000)
    loop = [
        sass(0x100, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT", tiles, 10, 5),
        sass(0x110, "@!P0  FMUL R6, R2, 1.4426950216293334961", tiles, 0, hot_wait),
        sass(0x120, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0", tiles, 3, 1),
        sass(0x130, "WARPGROUP.DEPBAR.LE gsb0, 0x0", tiles, 700, 2),
        sass(0x140, "FFMA R1, R2, R3, -R4", tiles, 0, 7),
    ]
    prologue = [  # an MMA run once per CTA: more instructions share this count, fewer executions
        sass(0x000, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT", 8, 1, 1),
        sass(0x010, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT", 8, 1, 1),
        sass(0x020, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT", 8, 1, 1),
        sass(0x030, "S2R R0, SR_TID.X", 8, 0, 4),
    ]
    elementwise = [sass(0x000, "LDG.E R2, desc[UR4][R2.64]", 99, 0, 3)]
    attention = "kernel_cutlass_kernel_s2sattentioncutebackward_dkdv_sm90<Tiles>(float)"
    write_raw(tmp_path / "raw.csv", [(attention, 4.56, 63.6), ("void at::fill_kernel<float>", 0.0025, 0.0)])
    kernels = [
        (attention, prologue + loop),
        (attention, prologue + loop),
        ("void at::fill_kernel<float>", elementwise),
    ]
    write_source(tmp_path / "source.csv", kernels)

    text = profile.report(tmp_path / "raw.csv", tmp_path / "source.csv", top_sites=2)
    assert "| 0 | kernel_cutlass_kernel_s2sattentioncutebackward_dkdv_sm90 | (128, 16, 1) |" in text
    assert "4.560000 ms | 63.600000 %" in text and "0.002500 ms" in text, text
    assert text.count("main loop of") == 1, f"seed {seed}: one kernel has MMAs, listed once: {text}"
    assert f"main loop of 5 instructions, {tiles:,} warp iterations" in text, (seed, text)
    assert "opcodes per iteration: HGMMA 2, FMUL 1, WARPGROUP 1, FFMA 1" in text, (seed, text)
    assert f"wait {hot_wait + 15:,}, barrier 713" in text, (seed, text)
    sites = text.split("| address | instruction | samples | main reasons |")[1].strip().splitlines()[1:]
    assert len(sites) == 2 and "FMUL R6, R2" in sites[0] and f"wait {hot_wait:,}" in sites[0], (seed, sites)
    assert "WARPGROUP.DEPBAR" in sites[1], (seed, sites)


def test_report_refuses_a_page_that_is_not_ncus(profile, tmp_path):
    (tmp_path / "raw.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="not ncu's raw page"):
        profile.report(tmp_path / "raw.csv", None)
    with pytest.raises(SystemExit, match="does not exist"):
        profile.main(["report", str(tmp_path / "missing.csv")])


def test_opcode_drops_predicates_and_modifiers(profile):
    assert profile.opcode("@!P0  LDG.E R2, desc[UR36][R2.64]") == "LDG"
    assert profile.opcode("HGMMA.64x128x16.F32.BF16 R88, R196, gdesc[UR16].tnspB, R88, gsb0") == "HGMMA"
    assert profile.opcode("") == ""
