"""Running under `torchrun`: which slice of the inputs this rank takes, which device it uses, and
getting every rank's results to rank 0, which alone writes them, in input order.

Ranks take contiguous slices (sharding.py), so rank 0 writing rank 0's records, then rank 1's, and
so on, is input order. Only Python objects (records, embeddings) cross ranks, so the process group
is gloo even on GPUs: object collectives over NCCL would copy every pickle to the GPU and back.

Exit codes under torchrun: torchrun stops every worker as soon as one exits non-zero and then exits
1 itself. So ranks other than 0 wait at a final barrier until rank 0 has written everything and exit
0 (their per-file errors are on stderr); rank 0 exits with the run's code. A rank that fails outright
(model not loadable, out of memory) exits non-zero at once and torchrun ends the whole job.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from vitkit.errors import UsageError
from vitkit.runtime.sharding import Shard, select_shard

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Ranks meet only at the end, so the fastest waits there for the slowest. If a rank dies, torchrun
# stops the others long before this; it only bounds a rank stuck without dying.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def prefix(self) -> str:
        """For this rank's own stderr lines, so a user can tell which process hit which file."""
        return "" if self.is_main else f"[rank {self.rank}] "

    def shard(self, items: Sequence[T]) -> list[T]:
        return select_shard(items, Shard(self.rank, self.world_size))

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0, in rank order; None on the other ranks."""
        import torch.distributed as dist

        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object((socket.gethostname(), os.getpid(), obj), received, dst=0)
        if received is None:
            return None
        _local_peers.update(pid for host, pid, _ in received[1:] if host == socket.gethostname())
        return [value for _, _, value in received]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        holder = [obj if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


_context: RankContext | None = None
_local_peers: set[int] = set()  # pids of the other ranks on rank 0's node, learnt from gathers
PEER_EXIT_WAIT_SECONDS = 10.0


def is_launched() -> bool:
    """True in a process started by torchrun (or anything else that sets its variables) with 2+ ranks."""
    return all(name in os.environ for name in LAUNCH_ENV) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def stderr_prefix() -> str:
    """"[rank N] " for a rank other than 0 of a launch, from the environment alone (works before the
    process group exists, e.g. for a model that fails to load)."""
    return f"[rank {os.environ['RANK']}] " if is_launched() and os.environ["RANK"] != "0" else ""


def get_context() -> RankContext | None:
    """This process's rank, joining the process group on first use; None outside a multi-rank launch."""
    global _context
    if _context is not None or not is_launched():
        return _context
    try:
        rank, world, local = (int(os.environ[name]) for name in LAUNCH_ENV)
    except ValueError:
        raise UsageError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{', '.join(os.environ[n] for n in LAUNCH_ENV)}", hint="launch with torchrun") from None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_leave)
    _context = RankContext(rank, world, local)
    return _context


def rank_device(name: str) -> "torch.device | None":
    """The GPU of this rank when `name` asks for CUDA (or auto) and there is one; None to decide as usual.
    More ranks on a node than GPUs share them round-robin rather than all piling onto cuda:0."""
    context = get_context()
    if context is None or name not in ("auto", "cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", context.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def finish(exit_code: int = 0) -> None:
    """Hold every rank until rank 0 is done, so a rank that fails afterwards cannot make torchrun stop
    rank 0 mid-write; then leave the group. Rank 0, about to exit non-zero, first lets the other ranks
    on its node exit 0: torchrun would otherwise stop them and report each one as failed too."""
    context = get_context()
    if context is None:
        return
    context.barrier()
    _leave()
    if context.is_main and exit_code != 0:
        _wait_for_exit(_local_peers, PEER_EXIT_WAIT_SECONDS)


def _wait_for_exit(pids: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(_is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _is_running(pid: int) -> bool:
    # An exited worker stays a zombie until torchrun reaps it; that counts as exited.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel, which cannot tell zombies apart
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _leave() -> None:
    # _context stays: a collective after this fails loudly instead of the rank acting as a lone process.
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def refuse_launch(command: str, hint: str) -> None:
    """For commands that are one process's job (a search, an evaluation, a benchmark): under torchrun
    every rank would print its own copy of the results, or wait for collectives that never come."""
    if is_launched():
        raise UsageError(f"`vitkit {command}` does not run under torchrun", hint=hint)
