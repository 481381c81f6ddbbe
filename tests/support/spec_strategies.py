"""Hypothesis strategies for codec specs, shared by the conformance laws and the rule tests."""

from hypothesis import strategies as st


def spec_strategy():
    """A one-pipeline lossy spec (fedpress.codecs.spec): every stage family with random parameters."""
    r = st.floats(0.001, 1.0)
    blk = st.sampled_from([0, 1, 5, 64, 256])
    return st.one_of(
        st.just("none"), st.just("fp16"), st.just("bf16"),
        st.builds(lambda b, lo, w, rd: f"fixed:bits={b},lo={lo},hi={lo + w},rounding={rd}",
                  st.integers(1, 8), st.integers(-5, 0), st.integers(1, 10),
                  st.sampled_from(["floor", "nearest", "stochastic"])),
        st.builds(lambda b, k, m, s: f"q:bits={max(b, 2 if m == 'absmax' else 1)},block={k},mode={m},stochastic={s}",
                  st.integers(1, 8), blk, st.sampled_from(["minmax", "absmax"]), st.integers(0, 1)),
        st.builds(lambda s, k: f"qsgd:levels={s},block={k}", st.integers(1, 127), blk),
        st.builds(lambda k: f"sign:block={k}", blk),
        st.builds(lambda k: f"ternary:block={k}", blk),
        st.builds(lambda x: f"topk:ratio={x:.4g}", r),
        st.builds(lambda x, u: f"randk:ratio={x:.4g},unbiased={u}", r, st.integers(0, 1)),
        st.builds(lambda t: f"threshold:tau={t}", st.sampled_from([0, 0.01, 0.5, 2])),
        st.builds(lambda k: f"svd:rank={k},min_size=0", st.integers(1, 5)),
        st.builds(lambda k: f"powersgd:rank={k},min_size=0", st.integers(1, 5)),
        st.builds(lambda k: f"rht:block={k}", st.sampled_from([2, 4, 8, 4096])),
        st.builds(lambda c, r, k, e: f"sketch:cols={c},rows={r},k={k},est={e}", st.sampled_from([1, 3, 16]),
                  st.sampled_from([1, 2, 3, 4, 15]), st.sampled_from([0, 1, 5]), st.sampled_from(["median", "mean"])),
        st.builds(lambda r, inner: f"sketch:ratio={r:.3g},rows=3+{inner}", st.floats(0.01, 0.5),
                  st.sampled_from(["q:bits=8", "fp16", "qsgd:levels=4,block=8"])),
        st.builds(lambda d, k, it: f"pq:dim={d},centroids={k},iters={it}", st.integers(1, 9), st.integers(2, 40),
                  st.integers(1, 5)),
        st.builds(lambda k, inner: f"rht:block={k}+{inner}", st.sampled_from([2, 8, 4096]),
                  st.sampled_from(["sign", "q:bits=2", "q:bits=4,block=5", "qsgd:levels=4,block=8",
                                   "ternary:block=64", "topk:ratio=0.3+fp16"])),
    )
