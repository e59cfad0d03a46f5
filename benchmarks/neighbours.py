"""Neighbour draws per second: the prebuilt FAISS index vs loading the pool and computing distances.

    python benchmarks/neighbours.py [--quick]

One draw is what mutation does (paper Appendix H): sample a pool of P = 10,000
corpus items (the whole corpus when smaller), take the k = 50 nearest to the
query within the pool, pick one.

- plain: the NumPy way -- read the pool's images from the corpus file (uint8,
  ``np.load(mmap_mode="r")``, page cache warm), convert to float in [0, 1],
  squared distances by broadcasting, ``argpartition`` for the k nearest;
- flat: ``NeighbourIndex.draw`` on the prebuilt exact flat index (FAISS
  ``IDSelectorArray``: distances for the pool's ids only, no copy);
- index: the same draw as the search makes it, with the default settings:
  for large image corpora the flat search is pruned by PCA lower bounds in
  three stages of 31, 63 and 255 components (``search.index.bound_dims:
  auto``, :mod:`oesearch.search.bounds`), whose results are exactly the flat
  ones (checked here on 50 draws, mutation and mating, before timing).

Corpora: 10K and 300K natural images of 32x32x3 = 3,072 values (80MTI scale):
the CIFAR-10 JPEGs of ../shared/data, 60,000 images in five variants (as they
are, mirrored, shifted by 2 pixels down, 2 left, mirrored and shifted), or
uniform random pixels when the archive is absent (said in the output; the
bound prunes nothing on those). And 2M random items of 8x8x3 = 192 values: 2M x 3,072 float32 is 24.6 GB,
more than this machine's memory, so the 2M case shows the size-independence of
a draw at a smaller dimension (a draw costs O(P x D), not O(N)).  Without ``--quick`` the 2M corpus is also
indexed with IVF-PQ (``search.index.kind: ivfpq``; nlist 1024, nprobe 32,
24 bytes per vector), whose draws are approximate.  Build time and index
memory are reported.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from oesearch.search.bounds import auto_bound_dims  # noqa: E402
from oesearch.search.neighbours import NeighbourIndex  # noqa: E402

from _cifar import cifar_tree, describe, load_class  # noqa: E402

POOL, K = 10_000, 50
_CHUNK = 50_000


def make_corpus(n: int, dim: int, folder: Path, seed: int) -> np.ndarray:
    """A random uint8 corpus written to ``folder`` and opened as a read-only memmap."""
    path = folder / f"corpus-{n}-{dim}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for lo in range(0, n, _CHUNK):
        out[lo : lo + _CHUNK] = rng.integers(0, 256, (min(_CHUNK, n - lo), dim), dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def build_ivfpq(corpus: np.ndarray) -> tuple[NeighbourIndex, float]:
    """IVF-PQ over the whole corpus (one float copy at a time: 2M x 192 float32 is 1.5 GB)."""
    start = time.perf_counter()
    vectors = np.asarray(corpus, dtype=np.float32) / 255.0
    index = NeighbourIndex(vectors, np.arange(len(corpus)), kind="ivfpq", nlist=1024, nprobe=32, pq_m=24)
    return index, time.perf_counter() - start


def natural_corpus(n: int, folder: Path) -> np.ndarray | None:
    """``n`` (at most 300,000) natural 32x32x3 images flattened to uint8 rows, or None without the archive."""
    root = cifar_tree(5000, 1000)
    if root is None:
        return None
    images = np.concatenate([load_class(root, "train", None, 50_000), load_class(root, "test", None, 10_000)])
    variants = [images, images[:, :, ::-1], np.roll(images, 2, axis=1), np.roll(images, -2, axis=2),
                np.roll(images[:, :, ::-1], 2, axis=1)]
    corpus = np.concatenate(variants).reshape(-1, 3072)[:n]
    path = folder / f"natural-{n}.npy"
    np.save(path, corpus)
    return np.load(path, mmap_mode="r")


def build_pruned(corpus: np.ndarray) -> tuple[NeighbourIndex, float]:
    """The index with the search's default settings (a PCA bound where ``auto`` turns it on)."""
    start = time.perf_counter()
    vectors = np.asarray(corpus, dtype=np.float32) / 255.0
    index = NeighbourIndex(vectors, np.arange(len(corpus)), bound_dims=auto_bound_dims(*corpus.shape))
    return index, time.perf_counter() - start


def build_index(corpus: np.ndarray) -> tuple[NeighbourIndex, float]:
    """The flat index over pixels in [0, 1], added in chunks so the float copy never exists twice."""
    start = time.perf_counter()
    flat = faiss.IndexFlatL2(corpus.shape[1])
    for lo in range(0, len(corpus), _CHUNK):
        flat.add(np.asarray(corpus[lo : lo + _CHUNK], dtype=np.float32) / 255.0)
    index = NeighbourIndex(None, np.arange(len(corpus)), _index=flat)
    return index, time.perf_counter() - start


def plain_draw(corpus: np.ndarray, query: int, rng: np.random.Generator, pool_size: int) -> int:
    pool = rng.choice(len(corpus), size=pool_size, replace=False)
    pool = np.sort(pool[pool != query])  # sorted: sequential reads
    vectors = np.asarray(corpus[pool], dtype=np.float32) / 255.0
    q = np.asarray(corpus[query], dtype=np.float32) / 255.0
    dist = ((vectors - q) ** 2).sum(axis=1)
    nearest = np.argpartition(dist, K)[:K]
    return int(pool[nearest[rng.integers(K)]])


def check_same_draws(index: NeighbourIndex, flat: NeighbourIndex, queries: np.ndarray, pool: int, draws: int = 50) -> None:
    """The pruned index must draw exactly what the flat one draws (every fifth draw a mating pair)."""
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for i in range(draws):
        q = [int(queries[i])] if i % 5 else [int(queries[i]), int(queries[i + 1])]
        if index.draw(q, a, pool, K) != flat.draw(q, b, pool, K):
            raise SystemExit(f"the pruned index drew another neighbour than the flat index for queries {q}")


def rate(draw, seconds: float, minimum: int) -> float:
    """Draws per second, running at least ``minimum`` draws and about ``seconds``."""
    count, start = 0, time.perf_counter()
    while count < minimum or time.perf_counter() - start < seconds:
        draw(count)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing windows (under 2 minutes)")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 10.0
    sizes = [(10_000, 3072), (300_000, 3072), (2_000_000, 192)]
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="oesearch-bench-nn-") as tmp:
        for n, dim in sizes:
            natural = natural_corpus(n, Path(tmp)) if dim == 3072 else None
            corpus = natural if natural is not None else make_corpus(n, dim, Path(tmp), seed=n)
            kind = "natural" if natural is not None else "random"
            flat_index, flat_build = build_index(corpus)
            index, build = build_pruned(corpus) if auto_bound_dims(n, dim) else (flat_index, flat_build)
            pool = min(POOL, n)
            queries = np.random.default_rng(1).integers(0, n, 10_000)
            if index is not flat_index:
                check_same_draws(index, flat_index, queries, pool)
            fast_rng, flat_rng, plain_rng = (np.random.default_rng(s) for s in (2, 2, 3))
            fast = rate(lambda i: index.draw([int(queries[i % len(queries)])], fast_rng, pool, K), seconds, 20)
            flat = rate(lambda i: flat_index.draw([int(queries[i % len(queries)])], flat_rng, pool, K), seconds, 20)
            plain = rate(lambda i: plain_draw(corpus, int(queries[i % len(queries)]), plain_rng, pool), seconds, 5)
            label = f"{n // 1000}K" if n < 1_000_000 else f"{n // 1_000_000}M"
            bound = index.bound.dims if index.bound is not None else 0
            rows.append((label, dim, kind, bound, build, index.memory_bytes / 2**20, plain, flat, fast))
            figures[f"draws_per_s_{label}"] = round(fast, 1)
            figures[f"flat_draws_per_s_{label}"] = round(flat, 1)
            figures[f"plain_draws_per_s_{label}"] = round(plain, 2)
            figures[f"index_vs_plain_{label}"] = round(fast / plain, 1)
            figures[f"flat_vs_plain_{label}"] = round(flat / plain, 1)
            figures[f"build_s_{label}"] = round(build, 2)
            figures[f"index_mib_{label}"] = round(index.memory_bytes / 2**20, 1)
            print(f"{label} x {dim} ({kind}, bound {bound}): built in {build:.1f}s, plain {plain:.1f}/s, "
                  f"flat {flat:.1f}/s, index {fast:.1f}/s", flush=True)
            del flat_index
            del index
            if n >= 1_000_000 and not args.quick:
                index, build = build_ivfpq(corpus)
                fast = rate(lambda i: index.draw([int(queries[i % len(queries)])], fast_rng, pool, K), seconds, 20)
                rows.append((f"{label} ivfpq", dim, kind, 0, build, index.memory_bytes / 2**20, plain, float("nan"), fast))
                figures[f"ivfpq_draws_per_s_{label}"] = round(fast, 1)
                figures[f"ivfpq_vs_plain_{label}"] = round(fast / plain, 1)
                figures[f"ivfpq_build_s_{label}"] = round(build, 2)
                figures[f"ivfpq_index_mib_{label}"] = round(index.memory_bytes / 2**20, 1)
                print(f"{label} x {dim} ivfpq: built in {build:.1f}s, index {fast:.1f}/s", flush=True)
                del index
            del corpus
    print(f"\npool {POOL:,} (or the whole corpus), k = {K}; one draw = pool sampling + k-NN in the pool + pick "
          "(exact on the flat index)\n")
    print("| corpus | dim | content | bound dims | index build (s) | index memory (MiB) | plain draws/s "
          "| flat draws/s | index draws/s | index / plain |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, dim, kind, bound, build, mib, plain, flat, fast in rows:
        print(f"| {label} | {dim} | {kind} | {bound} | {build:.1f} | {mib:.0f} | {plain:.1f} | {flat:.0f} | {fast:.0f} "
              f"| {fast / plain:.0f}x |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
