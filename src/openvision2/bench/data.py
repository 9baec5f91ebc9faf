"""ov2 bench data: images/s per CPU core from shards to augmented uint8 batches, beside open_clip.

Both pipelines read the same shards of photo-sized JPEGs (500x375 to 800x600, cut from the sample
photos that matplotlib, and scikit-learn where installed, ship; smooth synthetic photos otherwise)
in one process with one thread, and produce batches of `res` x `res` images with the DESIGN.md §4.2
augmentations:
  openvision2: ShardDataset + TrainAugment (crop box on the original size, reduced-size JPEG decode,
               numpy SimCLR-v2 jitter) -> uint8 [B, 3, res, res];
  open_clip:   its WebDataset pipeline stages (tarfile_to_samples, shuffle, decode("pilrgb"), rename,
               map_dict, to_tuple, batched) with open_clip.image_transform(res, is_train=True,
               aug_cfg scale 0.4-1, colour jitter 0.32/0.32/0.32/0.08 p 0.8, grayscale p 0.2) -> float.
The cost is process CPU time (user + system), so images per CPU-second = images/s per core, and other
processes on the machine do not distort it. Output statistics (per-channel mean and std on the 0-255
scale) are printed beside the speed to show the two produce the same kind of images.

`--shards SPEC...` reads a given source instead, local or remote (URLs, `pipe:` commands): the real
pipeline, fetching included. Remote shards are fetched by a background thread, so its wall images/s
is the figure to compare with the same shards read from disk (`--pipelines openvision2`).

`--simulate-corpus SHARDSxSAMPLES` (e.g. 100000x10000, a billion samples) measures the bookkeeping of the
training stream at scale instead: a sizes.json claims SAMPLES in each of SHARDS shards, each shard a
link to one stand-in tar of SAMPLES tiny images (so every byte read is real). It reports the time from
start to the first batch (shard list, counts, order, indexes, decode), the memory held by the order and
the indexes, the size of the data state, the order's CPU cost per sample, and a resume deep in the run.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HELP = "benchmark the data pipeline (shards -> augmented uint8 batches) against open_clip's"
SIZES = ((500, 375), (375, 500), (640, 480), (800, 600), (640, 427))


def add_arguments(parser) -> None:
    from ..commands._options import add

    add(parser, "--image-size", aliases=("--res",), dest="res", default="84,224",
        help="output image sizes in pixels, comma-separated")
    parser.add_argument("--images", type=int, default=600, help="images timed per pipeline and resolution")
    parser.add_argument("--batch-size", type=int, default=50, help="images per batch")
    parser.add_argument("--shards", nargs="+", metavar="SPEC", help="existing shards to read, local or remote "
                        "(http(s)://, s3://, gs://, hf:// URLs, pipe: commands; brace patterns): the real pipeline "
                        "from that source, fetching included (default: generate photo-sized JPEG shards)")
    parser.add_argument("--shuffle-buffer", type=int, default=1000,
                        help="samples shuffled together: also how many shards are fetched at once (default: 1000)")
    parser.add_argument("--keep", help="directory to write the generated shards to (default: a temporary one)")
    parser.add_argument("--pipelines", default="openvision2,open_clip", help="which pipelines to run")
    parser.add_argument("--simulate-corpus", metavar="SHARDSxSAMPLES",
                        help="measure start-up, memory and state of the training stream over a simulated corpus, "
                             "e.g. 100000x10000 (a billion samples; links to one stand-in tar)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _source_photos():
    """Real photographs shipped inside installed packages (no download)."""
    from PIL import Image

    found = []
    try:
        import matplotlib

        found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    try:
        import sklearn

        found += [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    return [Image.open(p).convert("RGB") for p in found if p.exists()]


def _synthetic_photo(rng, width: int, height: int):
    """Smooth multi-scale colour noise with a few sharp edges: JPEG-compresses like a photo."""
    import numpy as np
    from PIL import Image

    image = np.zeros((height, width, 3), dtype=np.float32)
    for scale, weight in ((4, 90.0), (16, 40.0), (64, 15.0)):
        small = rng.normal(0, 1, (max(2, height // (height // scale + 1)), max(2, width // (width // scale + 1)), 3))
        layer = Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8))
        image += weight * (np.asarray(layer.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255 - 0.5)
    image += 128 + rng.normal(0, 3, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_bench_shards(directory: Path, count: int, per_shard: int = 100, seed: int = 0) -> tuple[list[str], dict]:
    import numpy as np
    from PIL import Image

    from ..data.writer import ShardWriter

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    photos = _source_photos()
    total_bytes = 0
    with ShardWriter(directory, prefix="bench", per_shard=per_shard) as writer:
        for i in range(count):
            width, height = SIZES[i % len(SIZES)]
            if photos:
                photo = photos[i % len(photos)]
                # a random region with the target's aspect ratio, 60-100% of the photo's extent
                scale = rng.uniform(0.6, 1.0) * min(photo.width / width, photo.height / height)
                w, h = width * scale, height * scale
                x, y = rng.uniform(0, photo.width - w), rng.uniform(0, photo.height - h)
                image = photo.resize((width, height), Image.BICUBIC, box=(x, y, x + w, y + h))
            else:
                image = _synthetic_photo(np_rng, width, height)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=rng.choice((85, 90, 95)))
            total_bytes += buffer.tell()
            writer.write(f"{i:06d}", {"jpg": buffer.getvalue(), "txt": f"photo {i}"})
    paths = [str(directory / name) for name in sorted(writer.sizes)]
    return paths, {"images": count, "source": "photos" if photos else "synthetic",
                   "mean_jpeg_kb": round(total_bytes / count / 1024, 1),
                   "sizes": [f"{w}x{h}" for w, h in SIZES]}


def _channel_stats(images) -> dict:
    """Per-channel mean and std of uint8-scale images [N, 3, H, W]."""
    x = images.double()
    return {"mean": [round(v, 1) for v in x.mean(dim=(0, 2, 3)).tolist()],
            "std": [round(v, 1) for v in x.std(dim=(0, 2, 3)).tolist()]}


def _timed(batches, images: int, warmup: int = 1) -> tuple[float, float, list]:
    """CPU seconds and wall seconds for `images` images after `warmup` batches; the batches' images."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    kept, seen = [], 0
    cpu, wall = time.process_time(), time.perf_counter()
    while seen < images:
        batch = next(iterator)
        kept.append(batch)
        seen += len(batch)
    return time.process_time() - cpu, time.perf_counter() - wall, kept


def run_openvision2(shards: list[str], res: int, images: int, batch_size: int, shuffle_buffer: int = 1000) -> dict:
    import torch

    from ..data.augment import TrainAugment
    from ..data.loader import ShardBatches
    from ..data.shards import ShardDataset

    # the training stream (data/loader.py) in this process: the global order, read by offset
    stream = ShardBatches(ShardDataset(shards, TrainAugment(res), shuffle=True, shuffle_buffer=shuffle_buffer,
                                       batch_size=batch_size))
    try:
        cpu, wall, batches = _timed((b["images"] for b in stream), images)
    finally:
        stream.close()  # its fetched shards are removed
    out = torch.cat(batches)
    return {"images_per_s_per_core": round(len(out) / cpu, 1), "wall_images_per_s": round(len(out) / wall, 1),
            "output": {"shape": list(out.shape[1:]), "dtype": str(out.dtype).removeprefix("torch."),
                       **_channel_stats(out)}}


def run_open_clip(shards: list[str], res: int, images: int, batch_size: int, shuffle_buffer: int = 1000) -> dict:
    import warnings

    import open_clip
    import torch
    import webdataset as wds
    from open_clip.transform import AugmentationCfg

    from ..preprocess import MEAN, STD

    # open_clip warns that the jitter items are "unused" although its transform applies them
    warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
    transform = open_clip.image_transform(res, is_train=True, mean=MEAN, std=STD, aug_cfg=AugmentationCfg(
        scale=(0.4, 1.0), color_jitter=(0.32, 0.32, 0.32, 0.08), color_jitter_prob=0.8, gray_scale_prob=0.2))
    # open_clip_train.data.get_wds_dataset's training stages (its module needs pandas; the stages are
    # webdataset's): shard list, tar -> samples, sample shuffle, PIL decode, transform, batch.
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(shards), wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=shuffle_buffer, initial=shuffle_buffer), wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"), wds.map_dict(image=transform),
        wds.to_tuple("image", "text"), wds.batched(batch_size, partial=False))

    def endless():
        while True:
            yield from (images_ for images_, _ in pipeline)

    cpu, wall, batches = _timed(endless(), images)
    out = torch.cat(batches)
    unnormalised = (out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    return {"images_per_s_per_core": round(len(out) / cpu, 1), "wall_images_per_s": round(len(out) / wall, 1),
            "output": {"shape": list(out.shape[1:]), "dtype": str(out.dtype).removeprefix("torch."),
                       **_channel_stats(unnormalised)}}


PIPELINES = {"openvision2": run_openvision2, "open_clip": run_open_clip}


def _stand_in_corpus(directory: Path, shards: int, samples: int) -> str:
    """`shards` links to one tar of `samples` 8x8 JPEGs, and a sizes.json claiming `samples` each."""
    import numpy as np
    from PIL import Image

    from ..data.writer import SIZES_FILE, ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(directory / "stand-in", prefix="one", per_shard=samples) as writer:
        for i in range(samples):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=50)
            writer.write(f"{i:06d}", {"jpg": buffer.getvalue(), "txt": f"sample {i}"})
    target = directory / "stand-in" / "one-000000.tar"
    width = len(str(shards - 1))
    names = [f"sim-{k:0{width}d}.tar" for k in range(shards)]
    for name in names:
        os.symlink(target, directory / name)
    (directory / SIZES_FILE).write_text(json.dumps({name: samples for name in names}))
    return f"{directory}/sim-{{{0:0{width}d}..{shards - 1:0{width}d}}}.tar"


def simulate_corpus(spec: str, batch_size: int, shuffle_buffer: int, say) -> dict:
    """Start-up time, memory, state size and order cost of the training stream over a simulated corpus."""
    import gc
    import resource
    import tracemalloc

    import torch

    from ..data.augment import TrainAugment
    from ..data.loader import ShardBatches
    from ..data.shards import ShardDataset, _read_sizes
    from ..errors import UserError

    try:
        shards, samples = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise UserError(f"--simulate-corpus {spec!r}: give SHARDSxSAMPLES, e.g. 100000x10000") from None
    if shards < 1 or samples < 1:
        raise UserError("--simulate-corpus: at least one shard of one sample")
    with tempfile.TemporaryDirectory() as scratch:
        say(f"writing a stand-in tar of {samples} samples and {shards} links to it ...")
        pattern = _stand_in_corpus(Path(scratch), shards, samples)

        def stream() -> ShardBatches:
            return ShardBatches(ShardDataset(pattern, TrainAugment(32), shuffle_buffer=shuffle_buffer,
                                             batch_size=batch_size, seed=0), num_workers=0)

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started, cpu = time.perf_counter(), time.process_time()
        first = stream()
        batch = next(first)
        first_batch_s, first_batch_cpu = time.perf_counter() - started, time.process_time() - cpu
        state = first.state_dict()
        state_bytes = len(json.dumps(state).encode())
        buffer = io.BytesIO()
        torch.save(state, buffer)
        # the order alone: consecutive positions (how the stream reads), from deep in the run; and jumps
        # to a new window at every position (the worst case: a window's permutation drawn per sample)
        order, total = first.order, shards * samples
        count, start = 200_000, int(total * 0.4)
        t = time.process_time()
        for p in range(start, start + count):
            order.locate(p)
        per_sample_us = (time.process_time() - t) / count * 1e6
        jumps = 200
        t = time.process_time()
        for k in range(jumps):
            order.locate((k * 7919 * shuffle_buffer) % total)
        per_jump_us = (time.process_time() - t) / jumps * 1e6
        order_bytes = order.memory_bytes()
        first.close()
        # a resume deep in the run: the first batch at global position ~0.7 epochs
        resumed = stream()
        resumed.load_state_dict({**state, "position": int(total * 0.7) // resumed.global_batch})
        t = time.perf_counter()
        next(resumed)
        resume_first_batch_s = time.perf_counter() - t
        resumed.close()
        del first, resumed, order
        # memory, apart (tracing slows allocation-heavy code several times): what a fresh stream holds
        _read_sizes.cache_clear()  # the sizes.json's dict counts too
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        dataset = ShardDataset(pattern, TrainAugment(32), shuffle_buffer=shuffle_buffer, batch_size=batch_size, seed=0)
        shard_list = tracemalloc.get_traced_memory()[0] - base
        traced = ShardBatches(dataset, num_workers=0)
        with_order = tracemalloc.get_traced_memory()[0] - base
        next(traced)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        traced.close()
    return {"corpus": {"shards": shards, "samples_per_shard": samples, "samples": total},
            "batch_size": batch_size, "shuffle_buffer": shuffle_buffer, "images": list(batch["images"].shape),
            "first_batch_s": round(first_batch_s, 2), "first_batch_cpu_s": round(first_batch_cpu, 2),
            "python_heap_mb": {"shard_list": round(shard_list / 2**20, 1),
                               "with_counts_and_order": round(with_order / 2**20, 1),
                               "after_first_batch": round(held / 2**20, 1)},
            "order_mb": round(order_bytes / 2**20, 2),
            "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1),
            "state_bytes": {"json": state_bytes, "torch_save": buffer.tell()},
            "order_us_per_sample": round(per_sample_us, 2), "order_us_per_new_window": round(per_jump_us, 1),
            "resume_at_0.7_epoch_first_batch_s": round(resume_first_batch_s, 2)}


def run(args) -> int:
    import torch

    from ..errors import UserError

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.simulate_corpus:
        torch.set_num_threads(1)
        figures = simulate_corpus(args.simulate_corpus, args.batch_size, args.shuffle_buffer, say)
        say("\n".join(f"{k}: {v}" for k, v in figures.items()))
        if args.json:
            print(json.dumps(figures))
        return 0

    try:
        resolutions = [int(r) for r in args.res.split(",") if r.strip()]
    except ValueError:
        raise UserError(f"--image-size {args.res!r}: give sizes such as 84,224") from None
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = [n for n in names if n not in PIPELINES]
    if unknown or not names or not resolutions:
        raise UserError(f"--pipelines: use some of {', '.join(PIPELINES)}; --res: at least one resolution")
    if args.images < args.batch_size or args.batch_size < 1:
        raise UserError("--images must be at least --batch-size, which must be >= 1")
    torch.set_num_threads(1)  # per core: one process, one thread

    with tempfile.TemporaryDirectory() as scratch:
        if args.shards:
            from ..data.shards import expand_shards

            shards = [path for spec in args.shards for path in expand_shards(spec)]
            corpus = {"shards": args.shards}
        else:
            directory = Path(args.keep or scratch)
            say(f"writing {args.images} photo-sized JPEGs into {directory} ...")
            shards, corpus = write_bench_shards(directory, args.images)
        results = {name: {"by_res": {}} for name in names}
        for res in resolutions:
            for name in names:
                figures = PIPELINES[name](shards, res, args.images, args.batch_size, args.shuffle_buffer)
                results[name]["by_res"][str(res)] = figures
                say(f"{res:4d} px  {name:12s} {figures['images_per_s_per_core']:8.1f} images/s per core "
                    f"(wall {figures['wall_images_per_s']:.1f}/s)  output {figures['output']}")
    for name in names:  # the headline figure: the first resolution (84 px by default)
        results[name]["images_per_s_per_core"] = results[name]["by_res"][str(resolutions[0])]["images_per_s_per_core"]
    summary = {**results, "res": resolutions, "corpus": corpus, "batch_size": args.batch_size,
               "threads": 1, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if len(names) == 2:
        summary["speedup"] = {str(r): round(results["openvision2"]["by_res"][str(r)]["images_per_s_per_core"] /
                                            results["open_clip"]["by_res"][str(r)]["images_per_s_per_core"], 2)
                              for r in resolutions}
        say("openvision2 / open_clip images/s per core: " +
            ", ".join(f"{r} px {v}x" for r, v in summary["speedup"].items()))
    if args.json:
        print(json.dumps(summary))
    return 0
