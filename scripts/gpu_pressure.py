"""GPU memory pressure for the GPU check: make the driver evict paged optimizer state, safely.

How unified memory gets evicted (issue 23). bitsandbytes' paged optimizer state is managed
memory (``cudaMallocManaged``): its pages live on the GPU while used and can be moved to the
host by the driver. The NVIDIA UVM driver registers eviction callbacks with the GPU's
physical memory allocator (PMA), so that *ordinary* device allocations (``cudaMalloc``,
made through the resource manager) can take memory that managed pages hold: the driver
moves those pages to the host first (open-gpu-kernel-modules, ``uvm_pmm_gpu.c``: "Eviction
is also possible to be triggered by PMA. This makes it possible for other PMA clients (most
importantly RM which CUDA uses for non-UVM allocations) to successfully allocate memory from
the user memory pool allocated by UVM"). CUPTI records such a move as a device-to-host
transfer with migration cause *eviction*; the optimizer's next ``prefetch_tensor`` brings
the state back (host-to-device: the refill).

So a :class:`Squeeze` fills the GPU with plain device allocations to the last byte, then
*pushes* a few more megabytes (each of which the driver can only grant by evicting managed
pages), then gives the push and a margin back, so training goes on and the optimizer pages
its state back in. It never allocates managed memory (asking for more managed memory than the
GPU has free can hang the GPU on these machines), and it allocates outside torch's caching
allocator (through cuda-bindings), so the training's own cached blocks stay its own. What
moved is measured by the run's CUPTI spill counter, not assumed here: a driver that refuses
the push instead of evicting is reported as such.

The H200's first check filled the GPU through torch to 0.59 GiB free and pushed 92 MiB on
top: that fitted in the free memory, so nothing was evicted. The push must start from *full*.

:class:`CudaRuntime` is the only part that touches CUDA; the plan (:class:`Squeeze`) works on
any :class:`Allocator` and is tested on CPU with a fake one (``tests/test_gpu_check.py``).
Nothing here calls bitsandbytes' C layer: on CUDA 13 its ``prefetch_tensor(..., to_cpu=True)``
ends the whole process ("invalid device ordinal").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

MIB = 1024**2
GIB = 1024**3
CHUNKS = (1024 * MIB, 256 * MIB, 64 * MIB, 16 * MIB, 2 * MIB)
"""Ballast chunk sizes, largest first; 2 MiB is the GPU's large-page size (and UVM's root chunk)."""
PUSH_CHUNK = 2 * MIB


class CudaUnavailable(Exception):
    """The raw CUDA runtime cannot be used here; the message says why."""


class Allocator(Protocol):
    """Plain device memory, outside torch's caching allocator."""

    def free_bytes(self) -> int:
        """Free device memory, as ``cudaMemGetInfo`` reports it."""
        ...

    def alloc(self, size: int) -> int | None:
        """A device pointer to ``size`` bytes, or ``None`` when the device has no room (never raises for that)."""
        ...

    def release(self, pointer: int) -> None:
        """Give back an allocation."""
        ...


def _bindings() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 12.x before the cuda.bindings layout
        except ImportError as exc:
            raise CudaUnavailable(f"cuda-bindings is not installed ({exc})") from exc
    return runtime


class CudaRuntime:
    """:class:`Allocator` over the CUDA runtime through ``cuda-bindings`` (errors are return
    values there, never a process exit), on the device torch trains on (the primary context
    both share). Also moves a managed range to the host or the GPU on purpose."""

    def __init__(self, device: int = 0) -> None:
        self.rt = _bindings()
        self.device = device
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def _check(self, result: Any, call: str) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise CudaUnavailable(f"{call}: {getattr(error, 'name', error)}")
        return values[0] if len(values) == 1 else values

    def free_bytes(self) -> int:
        free, _total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free)

    def alloc(self, size: int) -> int | None:
        error, pointer = self.rt.cudaMalloc(size)
        if int(error) != 0:
            self.rt.cudaGetLastError()  # clear the sticky-free error state of a failed allocation
            return None
        return int(pointer)

    def release(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer), "cudaFree")

    def synchronize(self) -> None:
        self._check(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def prefetch(self, pointer: int, size: int, to_host: bool) -> None:
        """Move a managed range to the host or to this GPU (``cudaMemPrefetchAsync``, then a
        device synchronize). CUDA 13 takes a ``cudaMemLocation``; CUDA 12 a device number,
        or the location through ``cudaMemPrefetchAsync_v2``."""
        rt = self.rt
        location = rt.cudaMemLocation()
        kinds = rt.cudaMemLocationType
        location.type = kinds.cudaMemLocationTypeHost if to_host else kinds.cudaMemLocationTypeDevice
        location.id = 0 if to_host else self.device
        try:
            result = rt.cudaMemPrefetchAsync(pointer, size, location, 0, 0)
        except TypeError:
            v2 = getattr(rt, "cudaMemPrefetchAsync_v2", None)
            if v2 is not None:
                result = v2(pointer, size, location, 0, 0)
            else:
                result = rt.cudaMemPrefetchAsync(pointer, size, -1 if to_host else self.device, 0)
        self._check(result, "cudaMemPrefetchAsync")
        self.synchronize()


@dataclass
class SqueezeResult:
    """What one squeeze did (bytes)."""

    filled: int
    """Ballast added to bring the GPU to full."""
    pushed: int
    """Bytes granted past full: room the driver made by evicting managed memory."""
    asked: int
    """Bytes asked past full."""
    released: int
    """Given back afterwards (the push and the margin)."""
    free_after: int

    def line(self, step: int, held: int) -> str:
        made_room = (
            "the driver made room (evicting managed memory)"
            if self.pushed
            else "refused: the driver evicted nothing for plain allocations"
        )
        return (
            f"squeeze after step {step}: ballast {held / GIB:.2f} GiB held (+{self.filled / GIB:.2f});"
            f" pushed {self.pushed / MIB:.0f} of {self.asked / MIB:.0f} MiB past full: {made_room};"
            f" gave back {self.released / MIB:.0f} MiB, {self.free_after / GIB:.2f} GiB free for training"
        )


@dataclass
class Squeeze:
    """A ballast that crowds the trainer out of the GPU, as another job on a shared box would,
    and pushes it past full so managed memory is evicted.

    Args:
        allocator: Plain device memory (:class:`CudaRuntime` on a GPU).
        chunks: Ballast chunk sizes, largest first.
    """

    allocator: Allocator
    chunks: Sequence[int] = CHUNKS
    held: list[tuple[int, int]] = field(default_factory=list)
    """(pointer, size) of the ballast, oldest first."""

    @property
    def held_bytes(self) -> int:
        return sum(size for _, size in self.held)

    def fill(self, keep_free: int) -> int:
        """Allocate until less than ``keep_free`` + the smallest chunk is free; returns bytes added."""
        added = 0
        for size in self.chunks:
            while self.allocator.free_bytes() - size >= keep_free:
                pointer = self.allocator.alloc(size)
                if pointer is None:
                    break  # free memory is not all allocatable (fragmentation): try a smaller chunk
                self.held.append((pointer, size))
                added += size
        return added

    def push(self, nbytes: int) -> list[tuple[int, int]]:
        """Ask for ``nbytes`` more in 2 MiB pieces once the GPU is full: each one is granted only
        if the driver evicts managed memory for it. Stops at the first refusal."""
        pushed: list[tuple[int, int]] = []
        while sum(size for _, size in pushed) + PUSH_CHUNK <= nbytes:
            pointer = self.allocator.alloc(PUSH_CHUNK)
            if pointer is None:
                break
            pushed.append((pointer, PUSH_CHUNK))
        return pushed

    def squeeze(self, evict: int, margin: int) -> SqueezeResult:
        """Fill the GPU, push ``evict`` bytes past full, then give back the push and ``margin``
        bytes of ballast: the evicted state can page back in and the next batch has room."""
        filled = self.fill(keep_free=0)
        pushed = self.push(evict)
        pushed_bytes = sum(size for _, size in pushed)
        for pointer, _size in pushed:
            self.allocator.release(pointer)
        released = pushed_bytes + self.give_back(margin)
        released -= self.fill(keep_free=margin + pushed_bytes)  # give_back may overshoot by a chunk: top up
        return SqueezeResult(filled, pushed_bytes, evict, released, self.allocator.free_bytes())

    def give_back(self, nbytes: int) -> int:
        """Release ballast worth at least ``nbytes`` (newest pieces that fit first, then the
        smallest piece left: at most one chunk over); returns bytes released."""
        released = 0
        for index in range(len(self.held) - 1, -1, -1):
            pointer, size = self.held[index]
            if size <= nbytes - released:
                self.allocator.release(pointer)
                del self.held[index]
                released += size
        if released < nbytes and self.held:
            index = min(range(len(self.held)), key=lambda i: self.held[i][1])
            pointer, size = self.held.pop(index)
            self.allocator.release(pointer)
            released += size
        return released

    def take_the_rest(self, evict: int) -> int:
        """Fill the GPU and push past full, keeping it all: the next step must run out of memory."""
        self.fill(keep_free=0)
        self.held += self.push(evict)
        return self.held_bytes

    def release_all(self) -> None:
        self.give_back(self.held_bytes + 1)
