"""Published dense peaks of accelerators, the denominator of MFU (`ov2 train` metrics, `ov2 bench`)."""

from __future__ import annotations

import torch

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets, by a fragment of
# torch.cuda.get_device_name(); the first fragment that matches wins, so specific names come first.
# V100 has no bf16 (its 125 TFLOP/s are fp16), so it has no bf16 entry.
KNOWN_PEAKS_TFLOPS = {
    "bf16": {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
             "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "MI300X": 1307.0, "B200": 2250.0},
}


def known_peak_tflops(device: torch.device, precision: str = "bf16") -> float | None:
    """The device's published dense peak in that precision; None for a CPU or an unknown device."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in KNOWN_PEAKS_TFLOPS.get(precision, {}).items():
        if fragment in name:
            return peak
    return None
