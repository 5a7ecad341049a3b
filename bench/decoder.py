"""What one frame costs the process that decodes it: peak memory per frame kind.

    python bench/decoder.py [--size BYTES] [--only KIND,...]

Each kind is a hostile frame (lists of lists, each just under the bound on one
container's elements) of about --size bytes (default: the default
max_frame, 16 MiB) built to decode into as many objects as its bytes allow: a
list of nils, maps of small ints, empty containers, tiny strs and bins, the
extension types pspy decodes itself (datetimes, dates, Decimals, UUIDs, sets,
tuples), deep nesting. Every kind is decoded twice, each in a fresh process:
"unbounded" is msgpack.unpackb with pspy's extension hooks and no limits (what
pspy did before the frame bounds), "bounded" is codec.decode with the limits
derived from max_frame (what a provider does now). The cost is the rise of the
process's peak RSS (VmHWM, reset just before the decode) over its RSS before,
as a ratio to the frame's size; a refused frame shows the error it got.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024


def _array(count: int, item: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", count) + item * count


def _ext(code: int, payload: bytes) -> bytes:
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
    if len(payload) in fixed:
        return fixed[len(payload)] + struct.pack(">b", code) + payload
    return b"\xc7" + struct.pack(">Bb", len(payload), code) + payload


def _chunked(size: int, item: bytes, chunk: int) -> bytes:
    """A list of lists of ``chunk`` items each: just under the bound on one container's elements."""
    chunk = max(1, min(chunk, (size - 10) // len(item)))
    inner = _array(chunk, item)
    return _array(max(1, (size - 5) // len(inner)), inner)


def _map_of_small_ints(size: int, chunk: int) -> bytes:
    # uint32 keys (distinct within a map), fixint values: 6 bytes an entry
    chunk = max(1, min(chunk, (size - 10) // 6))
    inner = b"\xdf" + struct.pack(">I", chunk) + b"".join(b"\xce" + struct.pack(">I", i) + b"\x00"
                                                         for i in range(chunk))
    return _array(max(1, (size - 5) // len(inner)), inner)


def _deep(size: int) -> bytes:
    chain = b"\x91" * 999 + b"\xc0"   # 1000 levels: about msgpack's own stack limit
    return _array(size // len(chain), chain)


def build(kind: str, size: int, max_frame: int) -> bytes:
    """One frame of ``kind``: lists (maps) of one element (entry) fewer than the bound on
    one container allows, as many as fit, so the bound on their total is what is tested."""
    from pspy.rpc import codec
    bounds = getattr(codec, "limits_for", None)   # absent in a tree from before the bounds
    chunk = (bounds(max_frame).max_container if bounds else max_frame // 128) - 1
    import msgpack
    datetime_payload = msgpack.packb(["2026-12-07T18:30:00.123456", 3600_000_000])
    items = {
        "list of nils": b"\xc0",
        "list of negative fixints": b"\xe0",       # -32: not one of CPython's cached small ints
        "list of floats": b"\xca\x3f\x80\x00\x00",
        "list of maps {0: 0}": b"\x81\x00\x00",
        "list of empty maps": b"\x80",
        "list of empty lists": b"\x90",
        "list of 2-char strs": b"\xa2ab",
        "list of 1-byte bins": b"\xc4\x01x",
        "list of datetimes": _ext(4, datetime_payload),
        "list of dates": _ext(5, b"2026-12-07"),
        "list of Decimals": _ext(6, b"1"),
        "list of UUIDs": _ext(7, bytes(range(16))),
        "list of empty sets": _ext(2, b"\x90"),
        "list of 1-tuples": _ext(1, b"\x91\xc0"),
    }
    if kind in items:
        return _chunked(size, items[kind], chunk)
    if kind == "map of small ints":
        return _map_of_small_ints(size, chunk)
    if kind == "deep nesting (1000 levels)":
        return _deep(size)
    if kind == "tuples nested 60 deep":
        # Each level's payload is handed to the hook as a copy of (nearly) the whole frame.
        levels, data = 60, b""
        data = _chunked(size - 6 * 60, b"\xc0", chunk)
        for _ in range(levels):
            data = b"\xc9" + struct.pack(">Ib", len(data), 1) + data
        return data
    raise SystemExit(f"unknown kind {kind!r}")


KINDS = ["list of nils", "list of negative fixints", "list of floats", "map of small ints",
         "list of maps {0: 0}", "list of empty maps", "list of empty lists", "deep nesting (1000 levels)",
         "list of 2-char strs", "list of 1-byte bins", "list of datetimes", "list of dates",
         "list of Decimals", "list of UUIDs", "list of empty sets", "list of 1-tuples", "tuples nested 60 deep"]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_one(kind: str, size: int, bounded: bool, max_frame: int) -> dict:
    """In this (fresh) process: decode one frame of ``kind``, report the peak it cost."""
    import gc
    import time

    import msgpack

    from pspy.errors import ProtocolError
    from pspy.rpc import codec
    frame = build(kind, size, max_frame)
    estimate = None
    if bounded == "largest":
        # The largest frame of this kind the bounds let through (by bisection on
        # its size, measured without decoding): what an accepted frame can cost.
        limits = codec.limits_for(max_frame)
        low, high = 0, size
        while high - low > size // 256:
            middle = (low + high) // 2
            try:
                codec.measure(build(kind, middle, max_frame), limits)
                low = middle
            except ProtocolError:
                high = middle
        return {"size": low}
    if bounded:
        try:
            estimate = codec.measure(frame, codec.limits_for(max_frame))[0]
        except ProtocolError:
            pass
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current RSS
    start = time.perf_counter()
    outcome = "ok"
    try:
        if bounded:
            value = codec.decode(frame, limits=codec.limits_for(max_frame))
        else:
            value = msgpack.unpackb(frame, ext_hook=codec._top_hook, timestamp=3, raw=False,
                                    strict_map_key=False, use_list=True)
        del value
    except ProtocolError as e:
        outcome = f"refused: {e}"
    seconds = time.perf_counter() - start
    return {"kind": kind, "frame": len(frame), "peak": _status("VmHWM") - before, "seconds": seconds,
            "outcome": outcome, "estimate": estimate}


def run_child(kind: str, size: int, bounded: bool, max_frame: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([kind, size, bounded, max_frame])],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    if out.returncode != 0:
        return {"kind": kind, "frame": size, "peak": 0, "seconds": 0.0, "estimate": None,
                "outcome": f"child failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16 * MiB, help="frame size in bytes (default 16 MiB)")
    parser.add_argument("--max-frame", type=int, default=16 * MiB, help="the max_frame the bounds derive from")
    parser.add_argument("--only", default="", help="comma-separated kinds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, size, bounded, max_frame = json.loads(args.child)
        print(json.dumps(measure_one(kind, size, bounded, max_frame)))
        return 0
    sys.path.insert(0, REPO)
    from pspy.rpc import codec
    has_bounds = hasattr(codec, "limits_for")
    kinds = [k.strip() for k in args.only.split(",") if k.strip()] or KINDS
    print(f"Peak RSS of decoding one frame, max_frame {args.max_frame / MiB:g} MiB, Python "
          f"{sys.version.split()[0]}; cost = VmHWM rise / frame size, each in a fresh process")
    print("unbounded: msgpack with pspy's hooks, no limits; bounded: codec.decode with limits_for(max_frame);")
    print("largest accepted: the largest frame of the kind the bounds let through, its peak and what measure() "
          "estimated; x max_frame is the peak over max_frame")
    print(f"{'frame kind':28} {'MiB':>5} {'unbounded MiB':>13} {'(x frame)':>9} {'s':>6}  "
          f"{'bounded MiB':>11} {'s':>5}  {'accepted MiB':>12} {'peak MiB':>8} {'estimate':>8} "
          f"{'x max_frame':>11}  bounded outcome")
    print("-" * 170)
    worst = 0.0
    for kind in kinds:
        old = run_child(kind, args.size, False, args.max_frame)
        row = f"{kind:28} {old['frame'] / MiB:5.1f} {old['peak'] / MiB:13.1f} {old['peak'] / old['frame']:8.2f}x " \
              f"{old['seconds']:6.2f}  "
        if has_bounds:
            new = run_child(kind, args.size, True, args.max_frame)
            largest = run_child(kind, args.size, "largest", args.max_frame).get("size", 0)
            top = run_child(kind, largest, True, args.max_frame)   # in a fresh process: its peak alone
            # The frame itself is held too while it is decoded.
            held = (top["peak"] + top["frame"]) / args.max_frame
            worst = max(worst, held)
            row += f"{new['peak'] / MiB:11.1f} {new['seconds']:5.2f}  {top['frame'] / MiB:12.2f} " \
                   f"{top['peak'] / MiB:8.1f} {(top['estimate'] or 0) / MiB:8.1f} {held:10.2f}x  {new['outcome'][:48]}"
            if top["outcome"] != "ok":
                row += f" (largest accepted: {top['outcome'][:60]})"
        else:
            row += f"{'-':>11} {'-':>5}  (no bounds in this tree)"
        print(row, flush=True)
    if has_bounds:
        print(f"worst accepted frame: the frame and its objects peak at {worst:.2f}x max_frame "
              f"(goal: well under 4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
