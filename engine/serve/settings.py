"""`ServeConfig`: what the server may do, in one object checked once when it starts."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from srtrt.engine.datapath.imageio import DEFAULT_MAX_PIXELS
from srtrt.errors import SrtrtError

MiB = 2**20
MIN_KEEP_SECONDS = 60.0  # a finished job's result outlives the page's (or a program's) look at it


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models_dir: Path | None = None   # community model files and checkpoints offered besides the embedded models
    token: str | None = None         # bearer token; required on any non-loopback address
    device: str | None = None        # cpu | cuda[:i]; None = the best there is
    work_dir: Path | None = None     # per-job folders; None = a temporary folder removed at exit
    max_upload_bytes: int = 1024 * MiB
    max_pixels: int = DEFAULT_MAX_PIXELS  # LR pixels per image or video frame; 0 = no limit (the --max-pixels rule)
    queue_size: int = 16             # jobs waiting behind the running one; more get 429
    keep_seconds: float = 3600.0     # a finished job's files are deleted after this long...
    keep_bytes: int = 4096 * MiB     # ...or sooner, oldest first, when finished results exceed this
    warm_default: bool = False       # open the default model's backend at start (shows what `auto` chose)
    ray: str | None = None           # run jobs on a Ray Serve deployment: "auto" (local Ray) or a cluster address

    def __post_init__(self):
        if not is_loopback(self.host) and not self.token:
            raise SrtrtError(f"--host {self.host} is reachable from other machines: it needs --token "
                             "(bearer auth on every route)")
        if self.token is not None and not (self.token.isascii() and self.token.isprintable() and " " not in self.token):
            # HTTP headers and cookies carry bytes a client encodes its own way: only printable ASCII matches everywhere
            raise SrtrtError("--token must be printable ASCII without spaces (letters, digits, punctuation)")
        for flag, folder in (("--models", self.models_dir), ("--work-dir", self.work_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise SrtrtError(f"{flag}: not a folder", folder)
        if self.queue_size < 1:
            raise SrtrtError(f"--queue must be >= 1, not {self.queue_size}")
        if self.max_upload_bytes < 1:  # the flag counts MiB; a config made in Python may ask for less
            raise SrtrtError(f"--max-upload-mb must be > 0, not {self.max_upload_bytes / MiB:g}")
        if self.max_pixels < 0:
            raise SrtrtError(f"--max-pixels must be >= 0, not {self.max_pixels}")
        if not self.keep_seconds >= MIN_KEEP_SECONDS:  # NaN too: no result would ever expire
            raise SrtrtError(f"--keep-minutes must be >= {MIN_KEEP_SECONDS / 60:g}, not {self.keep_seconds / 60:g}")
        if self.keep_bytes < 1:  # 1 byte keeps the newest result only: the newest is always kept
            raise SrtrtError(f"--keep-mb must be > 0, not {self.keep_bytes / MiB:g}")
        if self.device is not None:  # every job would fail on it: refused now, as `srtrt run` refuses it
            from srtrt.engine.backends import torch_device

            torch_device(self.device, here=self.ray is None)  # --ray: the cluster's replicas hold the device
        if not 0 <= self.port <= 65535:  # the socket layer would take it modulo 65536 and listen elsewhere
            raise SrtrtError(f"--port must be 0-65535, not {self.port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
