"""Offline stand-ins for ``modal.Dict``, ``modal.Queue`` and ``modal.Volume``: Modal's method names and
semantics, in this process, so that two real service instances can share them as two web containers do.

What they keep of Modal's behaviour (``modal`` 1.x client documentation and source):

- :class:`FakeDict`: values are pickled on the way in and out (a value read is a copy: changing it does not
  change the stored one); ``put(key, value, skip_if_exists=True)`` is atomic and returns False if the key
  exists; ``pop(key)`` raises ``KeyError`` without a default; ``get``, ``contains``, ``len``, ``items``,
  ``keys``, ``values``, ``update``, ``clear`` and the mapping operators.
- :class:`FakeQueue`: FIFO partitions; ``get_many(n, block=False)`` returns ``[]`` when empty, and with
  ``block=True`` raises ``queue.Empty`` once ``timeout`` passes; ``get(block=False)`` returns None.
- :class:`FakeVolume`: one committed copy ("the cloud") and a mount per container. What a container writes
  is seen by another only after the writer's ``commit()`` and the reader's ``reload()``; ``reload`` commits
  the container's own changes first (Modal: "uncommitted changes may implicitly be committed"), and
  refuses while a file under the mount is open in this process (Modal: "Reloading will fail if there are
  open files for the volume"); ``read_file(path)`` gives the committed bytes without a reload.

And one rule of the service's own: no call of a fake Dict or Queue is made from a thread that runs an
asyncio event loop (each is a network round trip on Modal, and the loop serves every socket of a web
container). Such a call raises :class:`LoopBlocked` and is recorded in :data:`LOOP_CALLS`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pickle
import queue
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_MISSING = object()

LOOP_CALLS: list[str] = []
"""Where each call made on an event loop's thread came from (a test asserts it stays empty)."""


class LoopBlocked(AssertionError):
    """A blocking Modal call was made on an event loop's thread."""


def forbid_the_loop(what: str) -> None:
    """Raise :class:`LoopBlocked` (and record where) if this thread runs an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    where = "".join(traceback.format_stack(limit=8)[:-2])
    LOOP_CALLS.append(f"{what} on the event loop's thread ({threading.current_thread().name}):\n{where}")
    raise LoopBlocked(f"{what} blocks the event loop (a network round trip on Modal)")


class FakeDict:
    """A ``modal.Dict``."""

    def __init__(self) -> None:
        self._data: dict[Any, bytes] = {}
        self._lock = threading.Lock()
        self.calls = collections.Counter()

    @staticmethod
    def _copy(value: Any) -> bytes:
        return pickle.dumps(value)

    def get(self, key: Any, default: Any = None) -> Any:
        forbid_the_loop("Dict.get")
        self.calls["get"] += 1
        with self._lock:
            found = self._data.get(key)
        return default if found is None else pickle.loads(found)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        forbid_the_loop("Dict.put")
        self.calls["put"] += 1
        data = self._copy(value)
        with self._lock:
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = data
            return True

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        forbid_the_loop("Dict.pop")
        self.calls["pop"] += 1
        with self._lock:
            found = self._data.pop(key, None)
        if found is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return pickle.loads(found)

    def contains(self, key: Any) -> bool:
        forbid_the_loop("Dict.contains")
        with self._lock:
            return key in self._data

    def len(self) -> int:
        forbid_the_loop("Dict.len")
        with self._lock:
            return len(self._data)

    def items(self):
        forbid_the_loop("Dict.items")
        with self._lock:
            snapshot = list(self._data.items())
        for key, value in snapshot:
            yield key, pickle.loads(value)

    def keys(self):
        for key, _ in self.items():
            yield key

    def values(self):
        for _, value in self.items():
            yield value

    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        for key, value in dict(other or {}, **kwargs).items():
            self.put(key, value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __contains__(self, key: Any) -> bool:
        return self.contains(key)


class FakeSpace:
    """Named dicts, as ``modal.Dict.from_name(name, create_if_missing=True)`` gives them."""

    def __init__(self) -> None:
        self.dicts: dict[str, FakeDict] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> FakeDict:
        with self._lock:
            return self.dicts.setdefault(name, FakeDict())


class FakeQueue:
    """A ``modal.Queue`` with partitions."""

    def __init__(self) -> None:
        self._partitions: dict[str | None, collections.deque] = collections.defaultdict(collections.deque)
        self._ready = threading.Condition()

    def put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = 86400,
    ) -> None:
        forbid_the_loop("Queue.put")
        with self._ready:
            self._partitions[partition].append(pickle.dumps(v))
            self._ready.notify_all()

    def get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> list[Any]:
        forbid_the_loop("Queue.get_many")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            items = self._partitions[partition]
            while block and not items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._ready.wait(left)
            taken = [pickle.loads(items.popleft()) for _ in range(min(n_values, len(items)))]
        return taken

    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any:
        values = self.get_many(1, block, timeout, partition=partition)
        return values[0] if values else None

    def clear(self, *, partition: str | None = None, all: bool = False) -> None:  # noqa: A002 - Modal's name
        with self._ready:
            if all:
                self._partitions.clear()
            else:
                self._partitions.pop(partition, None)

    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        with self._ready:
            if total:
                return sum(len(items) for items in self._partitions.values())
            return len(self._partitions[partition])


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime in ns) of every file under ``root``."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                info = path.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def open_files_under(path: Path) -> list[str]:
    """The files under ``path`` this process has open (``/proc/self/fd``; none where there is no /proc)."""
    found = []
    prefix = str(path.resolve()) + os.sep
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for descriptor in descriptors:
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


class FakeVolume:
    """A ``modal.Volume``: the committed copy under ``cloud``; :meth:`mount` gives a container's view.
    ``refuse_open_files``: a mount's reload refuses while files under it are open (Modal's rule)."""

    def __init__(self, cloud: Path, refuse_open_files: bool = True) -> None:
        self.cloud = cloud
        cloud.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.commits = 0
        self.reloads = 0
        self.refused = 0
        self.refuse_open_files = refuse_open_files

    def mount(self, path: Path) -> VolumeMount:
        """The Volume mounted at ``path`` in a new container: the committed files are there."""
        mount = VolumeMount(self, path)
        mount.reload()
        return mount


class VolumeMount:
    """One container's view of a :class:`FakeVolume`, with ``modal.Volume``'s ``commit`` and ``reload``.

    Other threads of the container write under the mount while it commits or reloads (a result renamed
    into place, an upload streaming in), so a file counts as committed only with the stamp it had when it
    was copied: one that changes, or appears, during a commit is copied by the next one, and a reload
    removes only files that were committed and have since been deleted from the Volume."""

    def __init__(self, volume: FakeVolume, path: Path) -> None:
        self.volume = volume
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._synced: dict[str, tuple[int, int]] = {}  # file -> its stamp when it last went to or came back

    def commit(self) -> None:
        forbid_the_loop("Volume.commit")
        with self.volume.lock:
            self._commit()
            self.volume.commits += 1

    def _commit(self) -> None:
        now = _files(self.path)
        for name, stamp in now.items():
            if self._synced.get(name) != stamp:
                target = self.volume.cloud / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copy2(self.path / name, target)
                except FileNotFoundError:
                    continue
                self._synced[name] = stamp  # what changes after ``now`` was taken goes with the next commit
        for name in set(self._synced) - set(now):
            (self.volume.cloud / name).unlink(missing_ok=True)
            del self._synced[name]

    def read_file(self, path: str):
        """The committed bytes of ``path`` (relative to the Volume's root), in chunks; no reload needed."""
        forbid_the_loop("Volume.read_file")
        source = self.volume.cloud / path.lstrip("/")
        try:
            data = source.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{path} not found on the volume") from None
        for start in range(0, len(data), 1 << 16):
            yield data[start : start + (1 << 16)]

    def reload(self) -> None:
        forbid_the_loop("Volume.reload")
        if self.volume.refuse_open_files:
            held = open_files_under(self.path)
            if held:
                self.volume.refused += 1
                raise RuntimeError(f"there are open files preventing the operation: {held[0]}")
        with self.volume.lock:
            self._commit()
            cloud = _files(self.volume.cloud)
            for name, stamp in cloud.items():
                if self._synced.get(name) != stamp:
                    target = self.path / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.volume.cloud / name, target)
                    self._synced[name] = stamp
            for name in set(self._synced) - set(cloud):  # committed once, deleted since by another container
                (self.path / name).unlink(missing_ok=True)
                del self._synced[name]
            self.volume.reloads += 1
