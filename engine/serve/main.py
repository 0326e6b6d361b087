"""`srtrt serve`: check the settings, build the app, run it on uvicorn until Ctrl-C."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

from srtrt.engine.serve.settings import MiB, ServeConfig
from srtrt.errors import SrtrtError

TOKEN_ENV = "SRTRT_SERVE_TOKEN"  # keeps the token out of `ps` and shell history
GRACEFUL_SECONDS = 3             # uvicorn's wait for requests under way at shutdown


def config_from_args(args) -> ServeConfig:
    host = args.host.strip("[]")  # "[::1]", as a URL writes it, is the address ::1
    return ServeConfig(host=host, port=args.port, models_dir=Path(args.models) if args.models else None,
                       token=args.token or os.environ.get(TOKEN_ENV) or None, device=args.device,
                       work_dir=Path(args.work_dir) if args.work_dir else None,
                       max_upload_bytes=args.max_upload_mb * MiB, max_pixels=_max_pixels(args.max_pixels),
                       queue_size=args.queue, keep_seconds=args.keep_minutes * 60.0, keep_bytes=args.keep_mb * MiB,
                       warm_default=args.warm, ray=args.ray)


def _max_pixels(value: int | None) -> int:
    from srtrt.engine.datapath.imageio import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS if value is None else value


def _check_free(host: str, port: int, where: str) -> int:
    """The port to listen on: `port`, or the one the system gives for 0 (so "serving on" names the
    real address). One line, before "serving on", when the address cannot be listened on (in use,
    not this machine's); uvicorn would print its own error after that claim and exit with status 3."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as e:
            raise SrtrtError(f"cannot listen on {where} ({e.strerror or e})") from None
        return probe.getsockname()[1]


def _url(config: ServeConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host  # an IPv6 address, bracketed once
    return f"http://{host}:{config.port}/"


def server(app, config: ServeConfig):
    """uvicorn's server for `app`, which tells the app (`app.state.closing`) as it starts shutting down:
    uvicorn waits for requests under way, then cancels them with a traceback, and the app's lifespan
    hears of the shutdown only after that. Told first, the page's event streams and uploads end at once."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by = 0  # the first signal that asked it to stop

        def handle_exit(self, sig, frame):
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None):
            app.state.closing.set()
            await super().shutdown(sockets)
            if self.force_exit:  # a second Ctrl-C: uvicorn skips the app's shutdown, whose lifespan asyncio
                await self.lifespan.shutdown()  # would then cancel with a traceback; run it, quick as closing is set

    return Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                 timeout_graceful_shutdown=GRACEFUL_SECONDS))


def main(args) -> int:
    try:
        import uvicorn  # noqa: F401  (the extra is there: one line, not an ImportError, when not)

        from srtrt.engine.serve.app import create_app
    except ImportError as e:
        raise SrtrtError(f'srtrt serve needs its extra: pip install "srtrt[serve]" ({e})') from None
    config = config_from_args(args)
    # before the app makes its work folder: a failed start leaves none
    config = dataclasses.replace(config, port=_check_free(config.host, config.port, _url(config)))
    where = _url(config)
    running = server(create_app(config), config)
    print(f"srtrt: serving on {where}" + (" (open it as /?token=TOKEN once)" if config.token else "")
          + f"; API schema at {where}docs", file=sys.stderr)
    # SIGHUP (the terminal gone) shuts the server down as SIGTERM does: uvicorn takes SIGINT and SIGTERM only
    hang_up = signal.getsignal(signal.SIGHUP)
    if hang_up != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, running.handle_exit)
    try:
        running.run()
    except KeyboardInterrupt:  # uvicorn raises the signal that stopped it again once it has shut down
        pass
    finally:
        signal.signal(signal.SIGHUP, hang_up)
    if running.stopped_by:  # as srtrt run: 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP
        print(f"srtrt: stopped by {signal.Signals(running.stopped_by).name}", file=sys.stderr)
        return 128 + running.stopped_by
    return 0 if running.started else 3  # uvicorn.run's status for a server that never started
