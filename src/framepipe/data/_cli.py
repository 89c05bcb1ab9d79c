"""The data side's commands: ``pack``, ``snapshot``, ``restore`` and ``feed-bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .._argtypes import whole_number

COMMANDS = ("pack", "snapshot", "restore", "feed-bench", "local-s3")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        size = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; e.g. 64M, 2G or 1000000")
    return size


def _store_options(p: argparse.ArgumentParser, *, two: bool) -> None:
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint for s3:// URLs (default: boto3's, e.g. AWS_ENDPOINT_URL)")  # fmt: skip
    if two:
        p.add_argument("--dest-endpoint-url", default=None, help="S3 endpoint of the destination, if different")
    p.add_argument("--workers", type=whole_number(1), default=8, help="parallel transfers (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_parsers(sub) -> None:
    p = sub.add_parser("pack", help="pack a tree (or s3:// prefix, or WebDataset .tar shards) of small files into "
                                    "indexed tar shards")  # fmt: skip
    p.add_argument("src", help="folder or s3://bucket/prefix of files (sample key = path up to the first dot)")
    p.add_argument("dest", help="folder or s3://bucket/prefix (not inside src) for the shards, index.json and "
                                "pack-plan.json (the plan a re-run resumes from)")  # fmt: skip
    p.add_argument("--shard-size", type=_size, default=64 << 20, help="target bytes per shard (default 64M)")
    p.add_argument("--shard-samples", type=whole_number(1), default=100_000, help="at most this many samples per shard")
    _store_options(p, two=True)

    s = sub.add_parser("snapshot", help="freeze a packed dataset into an object store (immutable, hashed manifest)")
    s.add_argument("dataset", help="folder or s3:// prefix holding index.json")
    s.add_argument("dest", help="snapshot store: folder or s3://bucket/prefix")
    s.add_argument("--name", default=None, help="manifest name (default: the snapshot's content hash)")
    _store_options(s, two=True)

    r = sub.add_parser("restore", help="bring a snapshot up in another folder, bucket or endpoint, verified by hash")
    r.add_argument("manifest", help="the manifest: .../manifests/NAME.json")
    r.add_argument("dest", help="folder or s3://bucket/prefix to restore the dataset into")
    r.add_argument(
        "--verify", action="store_true", help="check objects already in a bucket by content, not stored SHA-256"
    )
    _store_options(r, two=True)

    sub.add_parser(
        "local-s3",
        help="start a throwaway S3 server (SeaweedFS) on loopback to try s3:// URLs; prints the variables to "
        "export; its data is discarded when it stops (Ctrl-C)",
    )

    f = sub.add_parser("feed-bench", help="samples/s and data-wait share: per-file GETs vs framepipe vs local disk")
    f.add_argument("--files", type=whole_number(1), default=200_000, help="synthetic small files (default 200000)")
    f.add_argument("--min-kb", type=whole_number(1), default=4, help="smallest file, KB (default 4)")
    f.add_argument("--max-kb", type=whole_number(1), default=32, help="largest file, KB (default 32)")
    f.add_argument("--batch", type=whole_number(1), default=256, help="samples per training step (default 256)")
    f.add_argument("--step-ms", type=float, default=50.0, help="simulated training step (default 50 ms)")
    f.add_argument("--steps", type=whole_number(1), default=200, help="training steps measured per mode (default 200)")
    f.add_argument("--feed-steps", type=whole_number(0), default=0,
                   help="batches for the feed-rate phase (default 0: one whole epoch)")  # fmt: skip
    f.add_argument("--loader-workers", type=whole_number(0), default=4, help="DataLoader worker processes (default 4)")
    f.add_argument("--modes", default=None,
                   help="comma-separated subset of the modes (default: all five; the report names them)")  # fmt: skip
    f.add_argument("--workdir", default=None, help="keep local shards and caches here (default: a temp folder)")
    f.add_argument("--endpoint-url", default=None, help="use this S3 server (default: start a local SeaweedFS)")
    f.add_argument("--quiet", action="store_true", help="no progress or summary")
    f.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _progress(args, unit: str):
    if args.quiet or args.json:
        return None
    from tqdm.auto import tqdm

    bar = {}

    def update(done: int, total: int, what: str = unit) -> None:
        if bar.get("what") != what:
            if "bar" in bar:
                bar["bar"].close()
            bar.update(what=what, bar=tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, leave=False))
        bar["bar"].n = done
        bar["bar"].refresh()

    return update


def run(args: argparse.Namespace) -> int:
    from . import pack, restore, snapshot

    if args.command == "feed-bench":
        return _feed_bench(args)
    if args.command == "local-s3":
        return _local_s3()
    progress = _progress(args, "shards" if args.command == "pack" else "objects")
    common = dict(endpoint_url=args.endpoint_url, dest_endpoint_url=args.dest_endpoint_url, workers=args.workers,
                  progress=progress)  # fmt: skip
    if args.command == "pack":
        result = pack(args.src, args.dest, shard_bytes=args.shard_size, shard_samples=args.shard_samples, **common)
        summary = (
            f"packed {result.samples} samples into {result.shards} shards ({result.bytes / 2**20:.1f} MiB) "
            f"at {result.url} in {result.seconds:.1f} s; {result.reused_shards} kept from an earlier run"
            + (
                f"; left out {len(result.left_out)} (writes in progress, dangling links): "
                f"{', '.join(result.left_out[:5])}"
                if result.left_out
                else ""
            )
        )
    elif args.command == "snapshot":
        result = snapshot(args.dataset, args.dest, name=args.name, **common)
        summary = (f"snapshot {result.url}: {result.objects} objects ({result.bytes / 2**20:.1f} MiB), "
                   f"{result.copied} copied, {result.kept} already there, in {result.seconds:.1f} s")  # fmt: skip
    else:
        result = restore(args.manifest, args.dest, verify=args.verify, **common)
        summary = (f"restored {result.objects} objects ({result.bytes / 2**20:.1f} MiB) to {result.url}, "
                   f"verified by SHA-256: {result.copied} copied, {result.kept} already there, "
                   f"in {result.seconds:.1f} s")  # fmt: skip
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    elif not args.quiet:
        print(summary)
    return 0


def _feed_bench(args: argparse.Namespace) -> int:
    from .._errors import FramepipeError
    from ._feedbench import MODES, feed_bench

    modes = MODES if args.modes is None else tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise FramepipeError(f"unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    progress = None
    if not (args.quiet or args.json):
        data_gib = args.files * (args.min_kb + args.max_kb) / 2 / 2**20
        print(f"feed-bench: {args.files} files of {args.min_kb}-{args.max_kb} KB, about {data_gib:.2f} GiB, held "
              f"three times on disk while it runs (the objects, their shards, a local copy): about "
              f"{3 * data_gib:.2f} GiB; --files sets the size", file=sys.stderr)  # fmt: skip

        def progress(what: str, done: int, total: int) -> None:
            end = "\n" if done >= total else ""
            print(f"\r{what}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    report = feed_bench(files=args.files, min_kb=args.min_kb, max_kb=args.max_kb, batch=args.batch,
                        step_ms=args.step_ms, steps=args.steps, feed_steps=args.feed_steps or None,
                        workers=args.loader_workers, modes=modes, endpoint_url=args.endpoint_url, workdir=args.workdir,
                        progress=progress)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if progress:
        print(file=sys.stderr)
    st = report["settings"]
    print(f"{st['files']} files of {st['file_kb'][0]}-{st['file_kb'][1]} KB ({st['dataset_bytes'] / 2**30:.2f} GiB) "
          f"in {st['shards']} shards | {st['object_store']} | batch {st['batch']}, step {st['step_ms']:g} ms, "
          f"{st['steps']} steps | {st['workers']} loader workers, {st['cpus']} CPUs")  # fmt: skip
    print(f"{'mode':<16} {'samples/s':>10} {'vs local disk':>14} {'data wait':>10} {'first batch':>12}")
    for r in report["modes"]:
        if "skipped" in r:
            print(f"{r['mode']:<16} skipped: {r['skipped']}")
            continue
        print(f"{r['mode']:<16} {r['samples_per_s']:>10.0f} {r.get('vs_local_disk', float('nan')):>14.3f} "
              f"{100 * r['wait_share']:>9.1f}% {r['first_batch_seconds']:>11.2f}s")  # fmt: skip
    print(
        "samples/s and data wait are steady state, after the first batch; data wait is the share of a "
        "training step's time spent blocked on the loader."
    )
    return 0


def _local_s3() -> int:
    """Serve a throwaway S3 endpoint until Ctrl-C or SIGTERM; print what to export to use it."""
    import time

    from ._seaweed import ACCESS_KEY, SECRET_KEY, LocalS3

    print("framepipe: starting a local S3 server (SeaweedFS) on loopback ...", file=sys.stderr, flush=True)
    with LocalS3() as endpoint:
        print(f"export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID={ACCESS_KEY} "
              f"AWS_SECRET_ACCESS_KEY={SECRET_KEY} AWS_DEFAULT_REGION=us-east-1", flush=True)  # fmt: skip
        print(f"framepipe: serving s3:// at {endpoint}; run the export line above in another shell, then e.g. "
              "framepipe pack FOLDER s3://bucket/data. Ctrl-C stops it and discards its data.",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("framepipe: local S3 server stopped; its data is gone.", file=sys.stderr)
    return 0
