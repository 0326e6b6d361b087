"""`srtrt` command line: run, eval, compare, train, interpolate, export, build.

Each subcommand parses its flags here and hands them to the module that does the work; an
expected failure (SrtrtError) is printed as one line and becomes the exit code.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .engine.batch import options
from .engine.video import CODECS
from .errors import SrtrtError

_COMMUNITY_FILE = "a community model file (.safetensors/.pth/.ckpt/.pt without an srtrt sidecar, read by spandrel)"


def _add_allow_noncommercial(p):
    p.add_argument("--allow-noncommercial", action="store_true",
                   help="let --model files be detected as spandrel_extra_arches' non-commercial architectures")


def _add_run(sub):
    p = sub.add_parser("run", help="upscale images (files, directories, globs)")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", help="output file (one input) or directory (many)")
    p.add_argument("--model", help="embedded model (srresnet, the default, or srgan), a checkpoint (.safetensors + .json) "
                                   f"or {_COMMUNITY_FILE}")
    _add_allow_noncommercial(p)
    p.add_argument("--backend", default="auto", choices=options.BACKENDS)
    p.add_argument("--precision", default="auto", choices=options.PRECISIONS)
    p.add_argument("--tile", type=int, default=None,
                   help="tile core size in LR pixels (cores are balanced, so at most N, rounded up to a side the "
                        "model takes); 0 = whole image in one pass")
    p.add_argument("--margin", type=int, default=None,
                   help="overlap on each side in LR pixels (default: the receptive-field radius)")
    p.add_argument("--batch", type=int, default=None, help="tiles per backend call")
    p.add_argument("--device", default=None, help="cpu or cuda[:i]")
    p.add_argument("--alpha", default="bicubic", choices=options.ALPHA_MODES, help="how an alpha channel is upscaled")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse inputs with more LR pixels (0 = no limit)")
    p.add_argument("--png-level", type=int, default=None, metavar="0-9",
                   help="PNG deflate level (default: measured for speed at a size close to level 6's; 9 = smallest)")
    video = p.add_argument_group("video")
    video.add_argument("--codec", default=None, choices=CODECS,
                       help="video encoder (default: libx264 for 8-bit, libx265 for 10-bit, libvpx-vp9 for .webm)")
    video.add_argument("--crf", type=int, default=None, help="video quality, the codec's own scale (default: measured, README)")
    video.add_argument("--preset", default=None, help="the encoder's speed preset (default: measured, README; x264 and "
                                                      "x265: the slowest that keeps pace with the network)")
    video.add_argument("--resume", action="store_true", help="continue videos whose earlier run died, from their closed segments")
    video.add_argument("--stop-at-bad-frame", action="store_true",
                       help="a video that fails to decode midway is written up to its last good frame (default: it fails)")
    video.add_argument("--deinterlace", default="auto", choices=options.DEINTERLACE_MODES,
                       help="make interlaced frames whole before upscaling (bwdif): auto = the frames flagged "
                            "interlaced, on = every frame, off = none")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS", help="spread the batch over a Ray cluster")
    p.add_argument("-q", "--quiet", action="store_true", help="say only what failed")


def _add_eval(sub):
    p = sub.add_parser("eval", help="Y-PSNR/SSIM/HF ratio of models and of bicubic on folders of HR images")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help=f"embedded model (srresnet, srgan), checkpoint or {_COMMUNITY_FILE}; repeat to score several in one "
                        "table (default: srresnet)")
    _add_allow_noncommercial(p)
    p.add_argument("--scale", type=int, default=None, help="must match the model (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_compare(sub):
    p = sub.add_parser("compare", help="one image (PNG; JPEG/WebP/TIFF by -o's suffix): LR, bicubic, each model "
                                       "and HR crops side by side")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", action="append", metavar="MODEL",
                   help=f"embedded model (srresnet, srgan), checkpoint or {_COMMUNITY_FILE}; repeat for several "
                        "(default: every embedded model installed)")
    _add_allow_noncommercial(p)
    p.add_argument("--crop", type=int, default=256, help="HR crop size in pixels (panels are shown at least 256 px)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file (default: refuse it)")


def _add_train(sub):
    from srtrt.train.config import DEFAULT_OUT, TrainConfig  # the defaults live there

    d = TrainConfig(data="")
    p = sub.add_parser("train", help="train SRResNet (phase srresnet) or SRGAN (phase srgan)")
    p.add_argument("data", help="folder of HR training images")
    p.add_argument("--out", default=None, help=f"run folder (default: {DEFAULT_OUT['srresnet']}, or "
                                               f"{DEFAULT_OUT['srgan']} for --phase srgan); a run there is resumed")
    p.add_argument("--phase", default=d.phase, choices=["srresnet", "srgan"])
    p.add_argument("--init", help="checkpoint to start from (the srgan phase needs the SRResNet one)")
    for name in ("scale", "blocks", "channels", "patch", "batch", "iters", "val_count", "val_crop",
                 "val_every", "log_every", "workers", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "adv_weight", "pixel_weight", "grid_weight", "gan_psnr_drop"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--schedule", default=d.schedule, choices=["constant", "cosine", "step"])
    p.add_argument("--content-loss", default=d.content_loss, choices=["mse", "vgg22", "vgg54"],
                   help="srgan phase: mse needs no VGG weights (SRGAN-MSE); vgg22/vgg54 need --vgg-weights")
    p.add_argument("--vgg-weights", help="VGG19 ImageNet weights (.pth or .safetensors) for the srgan phase")
    p.add_argument("--device", default=d.device)
    p.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start fresh; a run already in --out is moved to a sub-folder of it, earlier-N")
    p.add_argument("-q", "--quiet", action="store_true")


def _add_interpolate(sub):
    from srtrt.train.config import TrainConfig

    d = TrainConfig(data="")
    p = sub.add_parser("interpolate", help="blend a PSNR model with its GAN fine-tune; alpha chosen on held-out photos")
    p.add_argument("data", help="the training folder: its held-out photos (split as `srtrt train` splits them) choose alpha")
    p.add_argument("--gan", required=True, help="the GAN-trained checkpoint (fine-tuned from --psnr)")
    p.add_argument("--psnr", default=None, help="the PSNR-trained checkpoint (default: the embedded srresnet)")
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=None, help="use this alpha instead of choosing one")
    p.add_argument("--psnr-drop", type=float, default=1.0,
                   help="largest validation PSNR loss against the PSNR model an alpha may cost (dB)")
    p.add_argument("--val-count", type=int, default=d.val_count)
    p.add_argument("--val-crop", type=int, default=d.val_crop)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint")


def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="measure a model's int8 activation ranges on photos (the openvino int8 path)")
    p.add_argument("photos", help="a folder of ordinary photos (not a test set); each is bicubic-downscaled to LR")
    p.add_argument("--model", help="srtrt checkpoint whose sidecar gets the ranges (not an embedded model: they come "
                                   "with theirs), or a community model file (its ranges are kept in srtrt's cache by its sha256)")
    _add_allow_noncommercial(p)
    p.add_argument("--images", type=int, default=None, help="how many photos to use (default 16)")
    p.add_argument("--max-pixels", type=int, default=None, help="skip photos with more pixels (0 = no limit)")


def _add_export(sub):
    p = sub.add_parser("export", help="export the inference view to ONNX")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", help=f"embedded model (default srresnet), checkpoint or {_COMMUNITY_FILE}")
    _add_allow_noncommercial(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="int8: fp32 I/O, calibrated convs in QDQ form (needs srtrt calibrate)")
    p.add_argument("--fused", action="store_true",
                   help="one PixelShufflePReLU node per upsample step (srtrt's own networks)")
    p.add_argument("--polyphase", action="store_true",
                   help="last upsample step and tail conv in polyphase form (same values; faster on CPUs; "
                        "srtrt's own networks, community models are exported as they are)")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--shape", metavar="HxW", help="a graph fixed at this LR size, batch 1, instead of any size "
                                                  "(window-attention models, SwinIR, HAT and GRL, export only so)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file (default: refuse it)")


def _add_build(sub):
    p = sub.add_parser("build", help="build a TensorRT engine for this GPU, or a TensorRT-RTX one (no GPU needed); cached")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help=f"embedded model (default srresnet), checkpoint or {_COMMUNITY_FILE}")
    src.add_argument("--onnx", help="build from this ONNX file (from srtrt export) instead of a model")
    _add_allow_noncommercial(p)
    p.add_argument("--tensorrt", default="auto", choices=["auto", "trt", "rtx"],
                   help="trt: TensorRT, for this GPU; rtx: TensorRT-RTX, for --cc targets; auto: TensorRT where it "
                        "imports, else TensorRT-RTX")
    p.add_argument("--cc", default=None, metavar="M.m,...",
                   help="TensorRT-RTX target compute capabilities, e.g. 8.6,8.9 (default: its portable set; "
                        "current: the visible GPU)")
    p.add_argument("--precision", default=None, choices=["fp16", "fp32"],
                   help="the engine's precision (default fp16; with --onnx, the graph's own)")
    p.add_argument("--tile", type=int, default=None, help="LR tile core side the engine's profile is built for "
                                                          "(default 512)")
    p.add_argument("--margin", type=int, default=None,
                   help="tile margin in LR pixels (default: the model's receptive-field radius)")
    p.add_argument("--max-batch", type=int, default=4, help="most tiles per inference in the profile")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimisation level, 0-5")
    p.add_argument("--no-plugin", action="store_true",
                   help="keep DepthToSpace+PRelu instead of the Triton plugin (community models never use it)")
    p.add_argument("-o", "--output", help="write the plan here as well as into the cache")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o plan and its sidecar (default: refuse them)")


def _add_serve(sub):
    p = sub.add_parser("serve", help="a web page and an HTTP API over the engine (pip install \"srtrt[serve]\")")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; any but loopback needs --token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", metavar="DIR", help="offer the model files in DIR too (checkpoints, community models)")
    p.add_argument("--token", default=None,
                   help="bearer token for every route, the page included (or set SRTRT_SERVE_TOKEN)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i]")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse inputs with more LR pixels (0 = no limit)")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload in MiB")
    p.add_argument("--queue", type=int, default=16, help="jobs waiting behind the running one; more get HTTP 429")
    p.add_argument("--keep-minutes", type=float, default=60.0, help="how long a finished job's result is kept")
    p.add_argument("--keep-mb", type=int, default=4096, help="results kept in all (MiB), oldest deleted first")
    p.add_argument("--work-dir", default=None, help="where job folders go (default: a temporary folder)")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="open a model's backend at its first job, not the default model's at start")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run jobs on a Ray Serve deployment (one replica per GPU, else CPU replicas): a local Ray, "
                        "or the cluster at ADDRESS (pip install \"srtrt[serve-ray]\")")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="srtrt", description="Exact, fast, bounded-memory x4 super-resolution.")
    ap.add_argument("--version", action="version", version=f"srtrt {__import__('srtrt').__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_eval, _add_compare, _add_train, _add_interpolate, _add_calibrate, _add_export,
                _add_build, _add_serve):
        add(sub)
    return ap


def _run_train(args) -> int:
    from srtrt.train.config import TrainConfig
    from srtrt.train.trainer import train

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}, progress=not args.quiet)
    path = train(cfg)
    print(f"best model: {path}")
    return 0


def _dispatch(args) -> int:
    if args.command == "train":
        return _run_train(args)
    if args.command == "eval":
        from srtrt.train.evaluate import main as eval_main
        return eval_main(args)
    if args.command == "compare":
        from srtrt.train.compare import main as compare_main
        return compare_main(args)
    if args.command == "interpolate":
        from srtrt.train.interpolate import main as interpolate_main
        return interpolate_main(args)
    if args.command == "run":
        from srtrt.engine.batch.cli_run import main as run_main
        return run_main(args)
    if args.command == "serve":
        from srtrt.engine.serve.main import main as serve_main
        return serve_main(args)
    if args.command == "calibrate":
        from srtrt.engine.toolchain.quantize import main as calibrate_main
        return calibrate_main(args)
    if args.command == "export":
        from srtrt.engine.toolchain.export import main as export_main
        return export_main(args)
    if args.command == "build":
        from srtrt.engine.toolchain.trt_build import main as build_main
        return build_main(args)
    raise AssertionError(args.command)


@contextlib.contextmanager
def _output_notes_as_lines(quiet: bool):
    """An output format's loss (errors.OutputNote) as one `srtrt:` line, not Python's two-line
    warning; -q hides it. Python's own display is back when the command ends."""
    import warnings

    from srtrt.errors import OutputNote

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, OutputNote):
            return shown(message, category, filename, lineno, file, line)
        if not quiet:
            print(f"srtrt: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=OutputNote)  # a line, also under -W error / PYTHONWARNINGS=error
        warnings.showwarning = show
        yield


class _ReaderMayGo:
    """stdout or stderr for a command whose reader may go (`srtrt run DIR 2>&1 | head -4`) or whose
    log cannot be written (a full disk, `2>/dev/full`): from then on, the stream's descriptor is
    pointed at /dev/null and the command goes on. Its results are its files; a log that cannot be
    written costs the log only, not the rest of the batch."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except UnicodeEncodeError:  # a name the stream's encoding lacks (PYTHONIOENCODING=ascii): escaped
            encoding = self._stream.encoding or "ascii"
            return self.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except OSError:
            self._to_null()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._to_null()

    def _to_null(self) -> None:
        import os

        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _readers_may_go():
    before = sys.stdout, sys.stderr
    # a stream the process was started without (`2>&-`, cron) is /dev/null: print(file=None) writes
    # to stdout, which would mix the log into the command's output
    with open(os.devnull, "w") as null:
        sys.stdout, sys.stderr = (null if s is None else _ReaderMayGo(s) for s in before)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = before


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from srtrt.engine.datapath.decoder_messages import quiet_decoding_libraries

    quiet_decoding_libraries()  # before any thread starts: what decoders say is srtrt's to word
    from srtrt.engine.batch.allocator import keep_freed_buffers

    keep_freed_buffers()  # before the runtime's threads make their arenas
    from srtrt.engine.batch.signals import end_commands_on_signals

    with _readers_may_go():
        try:
            with end_commands_on_signals(), _output_notes_as_lines(getattr(args, "quiet", False)):
                return _dispatch(args)
        except SrtrtError as e:
            print(f"srtrt: {e}", file=sys.stderr)
            return e.exit_code
        except MemoryError:  # outside the tiles' own ladder: an import or a read under `ulimit -v`
            print("srtrt: not enough memory (a limit such as ulimit -v, or the machine's own)", file=sys.stderr)
            return 1
        except ImportError as e:  # a library that cannot be mapped (`ulimit -v`), or an install broken since
            from srtrt.errors import shown

            why = shown((str(e).splitlines() or [""])[0])
            memory = "; not enough memory to map it (a limit such as ulimit -v?)" if "map segment" in why else ""
            print(f"srtrt: cannot load {e.name or 'a library'}: {why}{memory}", file=sys.stderr)
            return 1
        except OSError as e:  # the system refused what no check foresaw (a folder's permissions, a name's length)
            from srtrt.errors import shown

            where = f"{shown(e.filename)}: " if e.filename is not None else ""
            print(f"srtrt: {where}{(e.strerror or str(e) or type(e).__name__).lower()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:  # Ctrl-C outside a batch, or a second signal during a batch's clean-up
            stopped = getattr(e, "name", None)  # signals.Stopped: which signal, and its exit code
            print(f"srtrt: stopped by {stopped}" if stopped else "srtrt: interrupted", file=sys.stderr)
            return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
