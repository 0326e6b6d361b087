"""HDR10 static metadata: read from the input's first frame, handed to the encoder as its parameters.

An HDR10 video says which display it was graded on (its primaries, white point and luminance
range) and how bright its brightest pixel and frame are (MaxCLL, MaxFALL). Players tone-map by
these; an output without them is shown with guessed ones. PyAV exposes them only as FFmpeg's raw
side-data structs, and cannot attach side data to the frames it encodes, so they travel as the
encoders' own options (x265 and x264 take FFmpeg's integer units, SVT-AV1 takes plain numbers).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

import av

_MASTERING = struct.Struct("<22i")  # AVMasteringDisplayMetadata: 10 AVRationals, has_primaries, has_luminance
_LIGHT = struct.Struct("<2I")       # AVContentLightMetadata: MaxCLL, MaxFALL
CHROMATICITY_UNIT = 50000           # x265/x264's master-display: x and y in 0.00002 steps
LUMINANCE_UNIT = 10000              # and luminance in 0.0001 cd/m^2
WRITES_HDR = {"libx265": "x265-params", "libx264": "x264-params", "libsvtav1": "svtav1-params"}


@dataclass(frozen=True)
class HdrMetadata:
    primaries: tuple[tuple[Fraction, Fraction], ...] | None  # (x, y) of red, green, blue, then the white point
    luminance: tuple[Fraction, Fraction] | None              # (min, max) cd/m^2 of the mastering display
    light_level: tuple[int, int] | None                      # (MaxCLL, MaxFALL) cd/m^2

    def encoder_params(self, codec: str) -> str:
        """`self` in `codec`'s parameter syntax (":"-joined, for WRITES_HDR[codec]); "" if it has none."""
        svt = codec == "libsvtav1"
        parts = []
        if self.primaries and self.luminance:
            def xy(x: Fraction, y: Fraction) -> str:
                if svt:
                    return f"({float(x):.5f},{float(y):.5f})"
                return f"({round(x * CHROMATICITY_UNIT)},{round(y * CHROMATICITY_UNIT)})"

            (rx, ry), (gx, gy), (bx, by), (wx, wy) = self.primaries
            low, high = self.luminance
            lum = f"L({float(high):.4f},{float(low):.4f})" if svt else \
                f"L({round(high * LUMINANCE_UNIT)},{round(low * LUMINANCE_UNIT)})"
            name = "master-display" if codec == "libx265" else "mastering-display"
            parts.append(f"{name}=G{xy(gx, gy)}B{xy(bx, by)}R{xy(rx, ry)}WP{xy(wx, wy)}{lum}")
        if self.light_level:
            name = {"libsvtav1": "content-light", "libx264": "cll"}.get(codec, "max-cll")
            parts.append(f"{name}={self.light_level[0]},{self.light_level[1]}")
        return ":".join(parts)


def _ratio(num: int, den: int) -> Fraction | None:
    return Fraction(num, den) if den > 0 else None


def side_data(frame: av.VideoFrame) -> list:
    """The frame's side data entries (av.sidedata.SideData, each with its `.type`). The container is a
    Mapping whose iteration gave the entries in PyAV 18.1.0 and gives their types in 18.1.1, where
    `.values()` gives the entries (in 18.1.0 it raises KeyError)."""
    container = frame.side_data
    return [side if isinstance(side, av.sidedata.sidedata.SideData) else container[side] for side in container]


def read_hdr(frame: av.VideoFrame) -> HdrMetadata | None:
    """The HDR10 static metadata `frame` carries, or None."""
    primaries = luminance = light = None
    for side in side_data(frame):
        data = bytes(side)
        if side.type == av.sidedata.sidedata.Type.MASTERING_DISPLAY_METADATA and len(data) >= _MASTERING.size:
            v = _MASTERING.unpack_from(data)
            points = [_ratio(v[i], v[i + 1]) for i in range(0, 16, 2)]
            bounds = (_ratio(v[16], v[17]), _ratio(v[18], v[19]))
            if v[20] and None not in points:  # has_primaries
                primaries = tuple(zip(points[0::2], points[1::2]))
            if v[21] and None not in bounds:  # has_luminance
                luminance = bounds
        elif side.type == av.sidedata.sidedata.Type.CONTENT_LIGHT_LEVEL and len(data) >= _LIGHT.size:
            light = _LIGHT.unpack_from(data)
    if primaries is None and luminance is None and light is None:
        return None
    return HdrMetadata(primaries, luminance, light)
