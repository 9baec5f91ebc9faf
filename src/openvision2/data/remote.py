"""Shards that live elsewhere: http(s)://, s3://, gs://, hf:// URLs and WebDataset `pipe:` commands.

The shard reader reads members by offset from an index of the tar headers; that random access is what
makes its shuffle a pure function of the position and its resume exact. So a remote shard is fetched
whole into a bounded local cache (streamed into a temporary file, renamed once complete) and then
indexed like a local one. While a slot trains on its current group of shards, a background thread
fetches the next shards of the slot's order, so a steady source costs no waiting. The cache keeps only
the current group's shards and those read ahead; everything else is deleted, and so is the directory
when the slot ends. A resumed slot simply fetches its group again.

Fetching never hangs and never stops a run: every connection and read has a timeout (a `pipe:` command
is killed when its output stalls that long), failures are retried with exponential backoff, and a
shard that still cannot be fetched raises UnreadableShard, which the reader counts as
`unreadable_shard` before going on with the next shard.

http(s) goes through the standard library; s3://, gs://, hf:// (and any other protocol fsspec knows)
through fsspec with the protocol's own package (s3fs, gcsfs, huggingface_hub: `pip install
openvision2[s3]`, `[gcs]`, `[hf]`), which takes its credentials from the usual places (AWS_* variables,
gcloud, HF_TOKEN).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.client
import json
import logging
import multiprocessing.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import UserError
from .tarindex import UnreadableShard

log = logging.getLogger("openvision2.data")

CHUNK = 1 << 20
RETRIED_HTTP = {408, 425, 429, 500, 502, 503, 504}  # other 4xx (404, 403) will not get better


def is_remote(spec: str) -> bool:
    """A URL with a scheme (http://, s3://, hf://, ...) or a `pipe:` command; not a local path."""
    return spec.startswith("pipe:") or ("://" in spec and not spec.startswith("file://"))


@dataclass(frozen=True, eq=False)
class RemoteOptions:
    """How remote shards are fetched (TrainConfig's shard_* fields)."""

    cache_dir: str = ""  # where fetched shards live while used; "" = the system's temporary directory
    read_ahead: int = 0  # shards fetched ahead of the current group; 0 = as many as the current group has
    timeout: float = 60.0  # seconds without progress (connect, read, a pipe's output) before a try fails
    deadline: float = 1800.0  # seconds for a whole shard: a try that takes longer (a drip-feeding server) fails
    max_bytes: int = 64 << 30  # a shard larger than this (a body that never ends) is unreadable, not retried
    retries: int = 3  # tries per shard before it counts as unreadable
    backoff: float = 1.0  # seconds before the 2nd try, doubled for each further one
    storage_options: dict = field(default_factory=dict)  # fsspec options, e.g. {"anon": true} for public S3


class FetchError(Exception):
    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# ------------------------------------------------------------------------------------------ fetchers
class _Budget:
    """The limits of one try: `deadline` seconds for the whole shard and `max_bytes` of it."""

    def __init__(self, options: RemoteOptions, stop: threading.Event):
        self.options, self.stop, self.ends = options, stop, time.monotonic() + options.deadline

    def check(self, written: int) -> None:
        if self.stop.is_set():
            raise FetchError("cancelled")
        if written > self.options.max_bytes:
            raise FetchError(f"larger than shard_max_bytes ({self.options.max_bytes} bytes)", permanent=True)
        if time.monotonic() > self.ends:
            raise FetchError(f"not complete after the {self.options.deadline:g} s deadline ({written} bytes)")


def _fetch_http(url: str, target: str, options: RemoteOptions, stop: threading.Event) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "openvision2"})
    budget = _Budget(options, stop)
    try:
        with urllib.request.urlopen(request, timeout=min(options.timeout, options.deadline)) as response, \
                open(target, "wb") as out:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit():
                budget.check(int(expected))  # refused before a byte is read
            written = 0
            # read1: whatever one receive brings, so a server that drips bytes meets the deadline
            while chunk := response.read1(CHUNK):  # raises IncompleteRead when the connection drops early
                out.write(chunk)
                written += len(chunk)
                budget.check(written)
            if expected is not None and written != int(expected):
                raise FetchError(f"got {written} of {expected} bytes")
    except urllib.error.HTTPError as err:
        raise FetchError(f"HTTP {err.code} {err.reason}", permanent=err.code not in RETRIED_HTTP) from None
    except (http.client.HTTPException, OSError) as err:  # URLError, timeouts, resets, SSL errors
        raise FetchError(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None


def _fetch_pipe(command: str, target: str, options: RemoteOptions, stop: threading.Event) -> None:
    """Run the command with its stdout into the file; kill it (and its children) when the output
    stalls for `timeout` seconds."""
    errors = tempfile.TemporaryFile()  # not a pipe: a chatty command must not block on a full one
    with open(target, "wb") as out:
        process = subprocess.Popen(command, shell=True, stdout=out, stderr=errors,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    size, progressed, budget = 0, time.monotonic(), _Budget(options, stop)
    try:
        while process.poll() is None:
            time.sleep(0.05)
            now_size = os.path.getsize(target)
            if now_size != size:
                size, progressed = now_size, time.monotonic()
            try:
                budget.check(size)
                if time.monotonic() - progressed > options.timeout:
                    raise FetchError(f"no output for {options.timeout:g} s")
            except FetchError:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
        budget.check(os.path.getsize(target))
        errors.seek(0)
        error = errors.read().decode("utf-8", "replace").strip().splitlines()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        errors.close()
    if process.returncode != 0:
        raise FetchError(f"exit status {process.returncode}" + (f": {error[-1]}" if error else ""))


def _fsspec_options(protocol: str, options: RemoteOptions) -> dict:
    """The protocol's own timeouts, so a stalled connection fails instead of hanging."""
    extra = {}
    if protocol in ("s3", "s3a"):
        extra = {"config_kwargs": {"connect_timeout": options.timeout, "read_timeout": options.timeout,
                                   "retries": {"max_attempts": 1}}}
    elif protocol in ("gs", "gcs"):  # gcsfs also retries 6 times by itself (~30 s on a dead network)
        extra = {"requests_timeout": options.timeout, "timeout": options.timeout}
    return {**extra, **options.storage_options}


def _fetch_fsspec(url: str, target: str, options: RemoteOptions, stop: threading.Event) -> None:
    try:
        import fsspec
    except ImportError:
        raise UserError("reading s3://, gs:// or hf:// shards needs fsspec: pip install fsspec") from None
    protocol = url.split("://", 1)[0]
    if protocol == "hf":
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(options.timeout)))
    try:
        fs, path = fsspec.core.url_to_fs(url, **_fsspec_options(protocol, options))
    except (ImportError, ValueError) as err:
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub"}.get(protocol, "?")
        raise UserError(f"reading {protocol}:// shards needs {package}: pip install 'openvision2[{protocol}]' "
                        f"({err})") from None
    budget, written = _Budget(options, stop), 0
    try:
        with fs.open(path, "rb", block_size=CHUNK * 8) as source, open(target, "wb") as out:
            while chunk := source.read(CHUNK * 8):
                out.write(chunk)
                written += len(chunk)
                budget.check(written)
    except FileNotFoundError:
        raise FetchError("not found", permanent=True) from None
    except PermissionError as err:
        raise FetchError(f"permission denied: {err}", permanent=True) from None
    except FetchError:
        raise
    except Exception as err:  # each backend raises its own network errors; all of them are retried
        raise FetchError(f"{type(err).__name__}: {err}") from None


def fetch(url: str, target: str, options: RemoteOptions, stop: threading.Event | None = None) -> None:
    """Fetch `url` into `target` (atomically: a temporary name, renamed when complete), retrying with
    backoff. Raises UnreadableShard when every try failed."""
    stop = stop or threading.Event()
    if url.startswith("pipe:"):
        fetcher, source = _fetch_pipe, url[5:]
    elif url.startswith(("http://", "https://")):
        fetcher, source = _fetch_http, url
    else:
        fetcher, source = _fetch_fsspec, url
    partial = f"{target}.{os.getpid()}.{threading.get_ident()}.part"
    tries = max(1, options.retries)
    for attempt in range(1, tries + 1):
        try:
            fetcher(source, partial, options, stop)
            os.replace(partial, target)
            return
        except FetchError as err:
            problem = err
        except OSError as err:  # the cache disk: full, removed
            problem = FetchError(f"cache: {err}")
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        if problem.permanent or attempt == tries or stop.is_set():
            break
        delay = options.backoff * 2 ** (attempt - 1)
        log.info("fetching %s failed (%s); try %d of %d in %.1f s", url, problem, attempt + 1, tries, delay)
        stop.wait(delay)
    raise UnreadableShard(f"fetch failed after {attempt} {'try' if attempt == 1 else 'tries'}: {problem}")


# --------------------------------------------------------------------------------------------- cache
def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pid_in(lock: str) -> int:
    """The pid a `.lock` file names (0 while it is being written: treated as alive by _alive)."""
    try:
        with open(lock) as f:
            text = f.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _sweep(root: str) -> None:
    """Remove the cache directories of this host's processes that died without cleaning up (SIGKILL)."""
    host = socket.gethostname()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        parts = name.rsplit("-", 2)  # host-pid-slotN_random
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class ShardCache:
    """Whole remote shards in a local directory: `get(url)` returns the local file (fetching it, or
    waiting for the background fetch of it); `want(owner, current, upcoming)` names the shards an owner
    (one source of a slot) needs now and next: the upcoming ones are fetched in the background and
    every file no owner wants is deleted. `close()` removes the directory."""

    def __init__(self, options: RemoteOptions, slot: int = 0, directory: str | None = None):
        self.options = options
        if directory is not None:  # another process's cache (a rank's, shared by its DataLoader workers)
            self.dir = directory
        else:
            root = options.cache_dir or os.path.join(tempfile.gettempdir(), "ov2-shard-cache")
            os.makedirs(root, exist_ok=True)
            _sweep(root)
            # unique per cache (several may live in one process); host and pid let _sweep find the orphans
            self.dir = tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{os.getpid()}-slot{slot}_", dir=root)
            # removed at exit too: a DataLoader worker ends without closing its stream (multiprocessing runs
            # these finalizers in its children as well as at the main process' exit)
            multiprocessing.util.Finalize(self, shutil.rmtree, args=(self.dir,), kwargs={"ignore_errors": True},
                                          exitpriority=0)
        self.owner = directory is None
        self._lock = threading.Condition()
        self._wanted: dict[object, list[str]] = {}
        self._queue: list[str] = []
        self._busy: set[str] = set()  # being fetched (by the background thread or a get)
        self._failed: dict[str, Exception] = {}  # background failures, raised by get
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def local_path(self, url: str) -> str:
        # the indexer recognises gzip by its magic bytes, so the name needs no real extension
        return os.path.join(self.dir, hashlib.sha1(url.encode()).hexdigest()[:20] + ".tar")

    def get(self, url: str) -> str:
        """The local copy of `url`. Raises UnreadableShard when it cannot be fetched."""
        target = self.local_path(url)
        with self._lock:
            while url in self._busy:
                self._lock.wait()
            if url in self._failed:
                raise self._failed.pop(url)
            if os.path.exists(target):
                return target
            if url in self._queue:
                self._queue.remove(url)
            self._busy.add(url)
        try:
            self._fetch_once(url)
        finally:
            with self._lock:
                self._busy.discard(url)
                self._lock.notify_all()
        return target

    def _fetch_once(self, url: str) -> None:
        """Fetch `url` unless another process sharing the directory is fetching it (a `.lock` file made
        with O_EXCL names the fetcher): then wait for its file, or take over if that process died."""
        target = self.local_path(url)
        lock = target + ".lock"
        tries = max(1, self.options.retries)
        patience = tries * (self.options.deadline + self.options.backoff * 2 ** tries) + 30
        waited_since = time.monotonic()
        while not os.path.exists(target):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if not _alive(_pid_in(lock)) or time.monotonic() - waited_since > patience:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(lock)  # its fetcher died (or hangs): fetch it ourselves
                    continue
                if self._stop.wait(0.05):
                    raise UnreadableShard("cancelled")
                continue
            try:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                if not os.path.exists(target):
                    fetch(url, target, self.options, self._stop)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
            return

    def want(self, owner: object, current: Iterable[str], upcoming: Iterable[str] = ()) -> None:
        current, upcoming = list(current), list(upcoming)
        with self._lock:
            self._wanted[owner] = current + upcoming
            keep = {self.local_path(u) for urls in self._wanted.values() for u in urls}
            wanted = {u for urls in self._wanted.values() for u in urls}
            self._queue = [u for u in self._queue if u in wanted]
            self._queue += [u for u in upcoming if u not in self._queue and u not in self._busy
                            and not os.path.exists(self.local_path(u))]
            self._failed = {u: e for u, e in self._failed.items() if u in wanted}
            if self._queue and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="ov2-shard-fetch", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        for name in os.listdir(self.dir):  # an open file stays readable after its name is removed
            path = os.path.join(self.dir, name)
            if path not in keep and not name.endswith((".part", ".lock")):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._lock.wait()
                if self._stop.is_set():
                    return
                url = self._queue.pop(0)
                self._busy.add(url)
            try:
                self._fetch_once(url)
            except Exception as err:  # UnreadableShard, or e.g. a missing protocol package: get() raises it
                with self._lock:
                    self._failed[url] = err
            finally:
                with self._lock:
                    self._busy.discard(url)
                    if not any(url in urls for urls in self._wanted.values()):  # unwanted while it came
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(self.local_path(url))
                    self._lock.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._queue.clear()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.options.timeout + 5)
            self._thread = None
        if self.owner:
            shutil.rmtree(self.dir, ignore_errors=True)


def sizes_beside(url: str, options: RemoteOptions) -> dict:
    """The sizes.json in the directory of a remote shard ({} for a `pipe:` command or when there is none),
    fetched once per directory."""
    if url.startswith("pipe:") or "/" not in url.split("://", 1)[-1]:
        return {}
    return _remote_sizes(url.rsplit("/", 1)[0] + "/sizes.json", options)


@functools.lru_cache(maxsize=64)
def _remote_sizes(url: str, options: RemoteOptions) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "sizes.json")
        try:
            fetch(url, target, dataclasses.replace(options, retries=1))
            with open(target) as f:
                sizes = json.load(f)
        except (UnreadableShard, OSError, ValueError):
            return {}
    return sizes if isinstance(sizes, dict) else {}
