"""Published figures of accelerators: dense peaks (the denominator of MFU in `ov2 train` metrics and
`ov2 bench`) and memory (what `ov2 plan --gpu KIND` plans for)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    """One kind of device: memory as torch reports it (total_memory, GiB) and dense tensor-core peaks in
    TFLOP/s from the vendor's data sheet (no sparsity); tf32 None where the chip has no TF32 (a TPU runs
    fp32 matmuls through bf16 passes). names: fragments of torch.cuda.get_device_name() that identify it."""

    kind: str
    memory_gib: float
    bf16_tflops: float
    tf32_tflops: float | None
    names: tuple[str, ...] = ()
    note: str = ""


# `ov2 plan --gpu KIND`. Memory: the total capacity torch's allocator reports (its out-of-memory message,
# get_device_properties().total_memory), a little under nvidia-smi's figure (an "80 GB" H100 shows
# 81,559 MiB there, 79.1 GiB to torch); the 12% allowance of plan/memory.py comes off this.
ACCELERATORS = {a.kind: a for a in (
    Accelerator("H100-80GB", 79.1, 989.0, 494.7, ("H100 80GB HBM3", "H100 SXM"), "H100 SXM5"),
    Accelerator("H100-NVL", 93.1, 835.5, 417.5, ("H100 NVL",), "H100 NVL (94 GB, PCIe form factor, its own clocks)"),
    Accelerator("H100-PCIe", 79.1, 756.0, 378.0, ("H100 PCIe",), "H100 PCIe 80 GB"),
    Accelerator("H200", 139.8, 989.0, 494.7, ("H200",), "H200 SXM, 141 GB HBM3e"),
    Accelerator("H800", 79.1, 989.0, 494.7, ("H800",), "H800 SXM5 (H100 compute, less NVLink bandwidth)"),
    Accelerator("A100-40GB", 39.4, 312.0, 156.0, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"), "A100 40 GB"),
    Accelerator("A100-80GB", 79.2, 312.0, 156.0, ("A100-SXM4-80GB", "A100 80GB"), "A100 80 GB"),
    Accelerator("B200", 178.4, 2250.0, 1125.0, ("B200",), "B200 (HGX, 180 GB HBM3e)"),
    Accelerator("L4", 22.0, 121.0, 60.0, ("L4",), "L4, 24 GB GDDR6"),
    Accelerator("MI300X", 192.0, 1307.4, 653.7, ("MI300X",), "AMD Instinct MI300X, 192 GB HBM3"),
    Accelerator("TPU-v4", 32.0, 275.0, None, (), "TPU v4 chip, 32 GiB HBM (as --device-memory 32; the paper's)"),
)}

# Dense peaks by a fragment of torch.cuda.get_device_name(); the first fragment that matches wins, so
# specific names come first (L40S before L4). Besides the table: GPUs `ov2 plan` does not list, and a generic H100 /
# A100 fallback. V100 has no bf16 (its 125 TFLOP/s are fp16), so it has no bf16 entry.
KNOWN_PEAKS_TFLOPS = {
    "bf16": {"L40S": 362.0, **{name: a.bf16_tflops for a in ACCELERATORS.values() for name in a.names},
             "H100": 756.0, "A100": 312.0, "A10G": 70.0},
    "tf32": {"L40S": 183.0, **{name: a.tf32_tflops for a in ACCELERATORS.values() for name in a.names if a.tf32_tflops},
             "H100": 378.0, "A100": 156.0, "A10G": 35.0},
}


def accelerator(kind: str) -> Accelerator:
    """The table's entry for --gpu KIND (case and '-' / ' ' / '_' do not matter); one line if unknown."""
    from .errors import UserError

    def key(text: str) -> str:
        return text.lower().replace(" ", "").replace("-", "").replace("_", "")

    found = {key(k): a for k, a in ACCELERATORS.items()}.get(key(kind))
    if found is None:
        raise UserError(f"unknown GPU kind {kind!r}: use one of {', '.join(ACCELERATORS)}, "
                        f"or --device-memory GIB for another device")
    return found


def known_peak_tflops(device, precision: str = "bf16") -> float | None:
    """The device's published dense peak in that precision; None for a CPU or an unknown device."""
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for fragment, peak in KNOWN_PEAKS_TFLOPS.get(precision, {}).items():
        if fragment in name:
            return peak
    return None
