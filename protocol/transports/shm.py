"""``shm``: one reused /dev/shm segment on the node, streamed bucket by bucket (CPU; x86-64 only).

Learner rank 0 writes every bucket at its manifest offset and stamps it with the version; each engine
worker maps the same file and reloads bucket i as soon as its stamp says so, while the learner writes
bucket i+1 (protocol/shm_stream.py: layout, stamps, memory ordering). The writer never waits for a
reader, so the export can finish while an engine is still generating; the segment keeps the whole
weight set until the next sync, so a restarted engine can load it without the learner.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch

from protocol.shm_stream import StreamSegment, segment_layout, wait_for_segment
from protocol.transports import register
from protocol.transports.base import Buckets, SyncSetup, Transport

DIRECTORY = "/dev/shm"


@register
class SharedMemory(Transport):
    name = "shm"
    streams = True
    keeps_last_export = True

    segment: StreamSegment | None = None

    @classmethod
    def scratch_location(cls) -> str:
        """A fresh segment path; the driver's pid in the name lets a later driver find orphans."""
        return f"{DIRECTORY}/reasonrl-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights"

    @classmethod
    def driver_open(cls, setup: SyncSetup) -> None:
        remove_orphaned_segments(str(Path(setup.location).parent))

    @classmethod
    def driver_close(cls, setup: SyncSetup) -> None:
        if setup.location and os.path.exists(setup.location):
            os.remove(setup.location)

    def _mapped(self, create: bool) -> StreamSegment:
        metas = self.setup.metas()
        if self.segment is None or not self.segment.matches(self.setup.location, metas):  # mapped once, reused
            self.segment = StreamSegment(self.setup.location, metas, self.setup.total_bytes, create=create)
        return self.segment

    def send(self, buckets: Buckets, version: int) -> None:
        segment = self._mapped(create=True)
        for index, (_, values) in enumerate(buckets):
            segment.publish(index, version, values)  # casts to the rollout dtype inside the copy

    def receive(self, version: int, payload: Any) -> Iterator[tuple[str, torch.Tensor]]:
        """Waits for the segment and bucket 0 before returning, so a learner that never exports fails
        without touching the model; a timeout mid-stream leaves the engine half-loaded."""
        s = self.setup
        deadline = time.monotonic() + s.timeout_s
        if self.segment is None or not self.segment.matches(s.location, self.setup.metas()):
            wait_for_segment(s.location, segment_layout(s.total_bytes, len(s.buckets))[1], deadline, s.timeout_s)
        segment = self._mapped(create=False)
        segment.wait(0, version, deadline, s.timeout_s)
        return segment.stream(version, deadline, s.timeout_s)

    def finish(self, version: int) -> list[tuple[float, float]]:
        """Refuses torn weights (a bucket rewritten during the load); returns the per-bucket
        (ready, consumed) monotonic times of this load."""
        assert self.segment is not None
        self.segment.check_unchanged(version)
        return self.segment.trace


def remove_orphaned_segments(directory: str = DIRECTORY) -> list[str]:
    """Delete weight segments left by drivers that no longer run (a SIGKILLed driver cannot remove its
    own, and each holds a whole model in RAM-backed /dev/shm). The driver's pid is in the name.

    A segment this process may not delete (another user's, in the sticky /dev/shm) is skipped and
    reported on stderr, never an error: it is not ours to clean. Returns the paths removed."""
    import sys

    removed = []
    for path in Path(directory).glob("reasonrl-*-*.weights"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:  # PermissionError: another user's segment
                print(f"warning: left orphaned weight segment {path} in place ({type(error).__name__}: "
                      f"{error.strerror or error})", file=sys.stderr)
                continue
            removed.append(str(path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
