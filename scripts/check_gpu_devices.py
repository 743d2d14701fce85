"""Check the NVML adapter (core/gpu_devices.py) against torch on a real NVIDIA box.

    python scripts/check_gpu_devices.py

For several ``CUDA_VISIBLE_DEVICES`` values (unset, ``0``, the first GPU's full UUID and
a prefix of it, the GPUs reversed, empty, and ``MIG-…`` where a GPU has MIG instances),
a fresh interpreter lists what torch sees (``cuda:i``: UUID and total memory) and what
:class:`core.gpu_devices.GpuDevices` maps to each torch ordinal. One line per value,
``PASS`` when both agree on every ordinal (UUIDs equal, totals within 2%), else ``FAIL``;
the exit code is 1 if any failed. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, torch
from loratop.core.gpu_devices import GpuDevices
gpus = GpuDevices()
torch_side = []
for i in range(torch.cuda.device_count()):
    torch_side.append({"uuid": str(torch.cuda.get_device_properties(i).uuid), "total": torch.cuda.mem_get_info(i)[1]})
nvml_side = [dict(row, uuid=d.uuid) for row, d in zip(gpus.read(), gpus.devices)] if gpus.state == "ok" else []
print(json.dumps({"torch": torch_side, "nvml": nvml_side, "state": gpus.state, "note": gpus.note}))
"""


def probe(visible: str | None) -> dict[str, Any]:
    """What torch and the adapter see in a fresh interpreter under ``visible``."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "probe failed")
    return json.loads(result.stdout.splitlines()[-1])


def _bare(uuid: str) -> str:
    """A UUID without its ``GPU-``/``MIG-`` prefix (torch prints it without)."""
    return uuid.split("-", 1)[1] if uuid.startswith(("GPU-", "MIG-")) else uuid


def verdict(seen: dict[str, Any]) -> tuple[bool, str]:
    """Whether torch's ``cuda:i`` is the adapter's ``cuda_index`` i, for every i."""
    torch_side, nvml_side = seen["torch"], seen["nvml"]
    if len(torch_side) != len(nvml_side):
        return False, f"torch sees {len(torch_side)} GPU(s), the adapter {len(nvml_side)} ({seen['note']})"
    for i, (t, n) in enumerate(zip(torch_side, nvml_side, strict=True)):
        if n["cuda_index"] != i or _bare(t["uuid"]) != _bare(n["uuid"]):
            return False, f"cuda:{i} is {t['uuid']} to torch, NVML index {n['index']} ({n['uuid']}) to the adapter"
        if abs(t["total"] - n["total"]) > 0.02 * t["total"]:
            return False, f"cuda:{i}: torch total {t['total']:,} B, NVML total {n['total']:,} B"
    order = ", ".join(f"cuda:{n['cuda_index']}=nvml{n['index']}" for n in nvml_side) or "no GPU visible"
    return True, order


def main() -> int:
    everything = probe(None)
    if not everything["torch"]:
        print(f"n/a: torch sees no GPU (adapter: {everything['state']} {everything['note']})")
        return 0
    uuids = [row["uuid"] for row in everything["nvml"]]
    cases: list[str | None] = [
        None,
        "0",
        uuids[0],
        uuids[0][:12],
        ",".join(str(i) for i in reversed(range(len(uuids)))),
        "",
    ]
    cases += [u for u in uuids if u.startswith("MIG-")][:1]
    failed = 0
    for visible in cases:
        try:
            ok, why = verdict(probe(visible))
        except RuntimeError as exc:
            ok, why = False, str(exc)
        failed += not ok
        shown = "(unset)" if visible is None else repr(visible)
        print(f"CHECK CUDA_VISIBLE_DEVICES={shown}: {'PASS' if ok else 'FAIL'} — {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
