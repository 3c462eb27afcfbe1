# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Compiled kernels: twins of ``edgeagent/kernels/_fallback.py``, which is the specification.

Every kernel performs the fallback's IEEE operations in the fallback's order, so results are
bit-identical, not merely close. Typed memoryviews and C pointers only, no ``cimport numpy``:
the extension does not depend on NumPy's C API or ABI, so one build keeps working across NumPy
upgrades. Build flags (setup.py): -fno-math-errno -fno-trapping-math let the loops vectorize
and change no result (NaN and inf are handled explicitly); -ffp-contract=off keeps GCC from
fusing a * b + c into one FMA, which it does by default on aarch64 and which rounds once
instead of twice. Import fails (and ``edgeagent.kernels`` falls back to NumPy) if a self-test
finds that this build does not compute exactly like the fallback.
"""

from libc.math cimport INFINITY, NAN, sqrt
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


# ---------------------------------------------------------------------------------------------
# quantize / dequantize

cdef inline signed char _quantize_one(float v, float scale, float lo, float hi,
                                      int zero_point) noexcept nogil:
    """saturate(rint(v / scale) + zero_point), NaN -> zero_point; lo, hi = -128 - zp, 127 - zp.

    Branch-free (selects, no libm call) so loops over it vectorize. Same result as the
    fallback's divide / rint / add zero_point / saturate, because:
    - NaN becomes 0 first, and 0 lands on zero_point.
    - Clamping to [-128 - zp, 127 - zp] before rounding instead of saturating after: the bounds
      are integers and rounding is monotonic, so rint(clamp(v)) == clamp(rint(v)); ties just
      past a bound (127.5 - zp) round to the bound or beyond, which saturates to the bound too.
    - After the clamp |v| <= 255, so v + 1.5 * 2**23 lies in [2**23, 2**24), where float32
      spacing is exactly 1: the addition rounds v to an integer in the current rounding mode
      (nearest, ties to even; the magic number is even, so "even" means even v) and the
      subtraction is exact. This needs float32 evaluated as float32 and no reassociation
      (no -ffast-math); _self_test below refuses a build where that does not hold.
    """
    cdef float zero = 0
    cdef float magic = 12582912.0  # 1.5 * 2**23
    v = v / scale
    v = v if v == v else zero
    v = lo if v < lo else v
    v = hi if v > hi else v
    v = (v + magic) - magic
    return <signed char>(<int>v + zero_point)


cdef void _quantize(const float* x, Py_ssize_t n, float scale, int zero_point,
                    signed char* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef float lo = <float>(-128 - zero_point)
    cdef float hi = <float>(127 - zero_point)
    for i in range(n):
        out[i] = _quantize_one(x[i], scale, lo, hi, zero_point)


cdef Py_ssize_t _tiled_length(Py_ssize_t channels, Py_ssize_t inner) noexcept nogil:
    """Whole periods of the per-channel pattern (channels * inner values), at least 256."""
    cdef Py_ssize_t period = channels * inner
    return period * ((256 + period - 1) // period)


cdef void _tile(Py_ssize_t channels, Py_ssize_t inner, Py_ssize_t length, const float* scale,
                const int32_t* zero_point, float* scales, int32_t* zero_points) noexcept nogil:
    """Per-element parameters for `length` values of the flattened (outer, channels, inner)
    array, so that the loops over it are plain contiguous loops that vectorize."""
    cdef Py_ssize_t j, c
    for j in range(length):
        c = (j // inner) % channels
        scales[j] = scale[c]
        zero_points[j] = zero_point[c]


cdef int _quantize_axis(const float* x, Py_ssize_t outer, Py_ssize_t channels,
                        Py_ssize_t inner, const float* scale, const int32_t* zero_point,
                        signed char* out) noexcept nogil:
    """x, out: (outer, channels, inner), channel c quantized with scale[c], zero_point[c].

    Long runs of one channel (inner >= 64) go through the per-tensor loop run by run; short
    ones (channels last: inner == 1) through parameters tiled per element, since a loop over
    3 channels does not vectorize. -1 if out of memory.
    """
    cdef Py_ssize_t o, c, j, base, n, start = 0, total = outer * channels * inner
    cdef float* scales
    cdef int32_t* zero_points
    cdef float zf, low = -128, high = 127
    if inner >= 64:
        for o in range(outer):
            for c in range(channels):
                base = (o * channels + c) * inner
                _quantize(x + base, inner, scale[c], zero_point[c], out + base)
        return 0
    n = _tiled_length(channels, inner)
    scales = <float*>malloc(n * sizeof(float))
    zero_points = <int32_t*>malloc(n * sizeof(int32_t))
    if scales != NULL and zero_points != NULL:
        _tile(channels, inner, n, scale, zero_point, scales, zero_points)
        while start < total:  # n is whole periods: every block starts at channel 0
            n = min(n, total - start)
            for j in range(n):
                zf = <float>zero_points[j]  # bounds in float: int32 -> float32 vectorizes
                out[start + j] = _quantize_one(x[start + j], scales[j], low - zf, high - zf,
                                               zero_points[j])
            start += n
    free(scales)
    free(zero_points)
    return 0 if start == total else -1


cdef void _dequantize(const signed char* q, Py_ssize_t n, float scale, int zero_point,
                      float* out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = <float>(<int>q[i] - zero_point) * scale


cdef int _dequantize_axis(const signed char* q, Py_ssize_t outer, Py_ssize_t channels,
                          Py_ssize_t inner, const float* scale, const int32_t* zero_point,
                          float* out) noexcept nogil:
    """As _quantize_axis."""
    cdef Py_ssize_t o, c, j, base, n, start = 0, total = outer * channels * inner
    cdef float* scales
    cdef int32_t* zero_points
    if inner >= 64:
        for o in range(outer):
            for c in range(channels):
                base = (o * channels + c) * inner
                _dequantize(q + base, inner, scale[c], zero_point[c], out + base)
        return 0
    n = _tiled_length(channels, inner)
    scales = <float*>malloc(n * sizeof(float))
    zero_points = <int32_t*>malloc(n * sizeof(int32_t))
    if scales != NULL and zero_points != NULL:
        _tile(channels, inner, n, scale, zero_point, scales, zero_points)
        while start < total:
            n = min(n, total - start)
            for j in range(n):
                out[start + j] = <float>(<int>q[start + j] - zero_points[j]) * scales[j]
            start += n
    free(scales)
    free(zero_points)
    return 0 if start == total else -1


def quantize(const float[::1] x, float scale, int zero_point, signed char[::1] out):
    """q = saturate(round_half_to_even(x / scale) + zero_point) in float32; NaN -> zero_point.

    Writes into ``out`` (same length as ``x``). Arguments are validated by the public API.
    """
    cdef Py_ssize_t n = x.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} elements, x has {n}")
    if n:
        with nogil:
            _quantize(&x[0], n, scale, zero_point, &out[0])


def quantize_axis(const float[:, :, ::1] x, const float[::1] scale,
                  const int32_t[::1] zero_point, signed char[:, :, ::1] out):
    """Per channel: x and out are (outer, channels, inner); channel c uses scale[c] and
    zero_point[c] (validated by the public API: positive finite, in [-128, 127])."""
    cdef Py_ssize_t outer = x.shape[0], channels = x.shape[1], inner = x.shape[2]
    _check_axis_args(x.shape, out.shape, scale.shape[0], zero_point.shape[0])
    cdef int status = 0
    if outer * channels * inner:
        with nogil:
            status = _quantize_axis(&x[0, 0, 0], outer, channels, inner, &scale[0],
                                    &zero_point[0], &out[0, 0, 0])
    if status:
        raise MemoryError()


def dequantize(const signed char[::1] q, float scale, int zero_point, float[::1] out):
    """out = float32(int32(q) - zero_point) * scale."""
    cdef Py_ssize_t n = q.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} elements, q has {n}")
    if n:
        with nogil:
            _dequantize(&q[0], n, scale, zero_point, &out[0])


def dequantize_axis(const signed char[:, :, ::1] q, const float[::1] scale,
                    const int32_t[::1] zero_point, float[:, :, ::1] out):
    """Per channel: q and out are (outer, channels, inner)."""
    cdef Py_ssize_t outer = q.shape[0], channels = q.shape[1], inner = q.shape[2]
    _check_axis_args(q.shape, out.shape, scale.shape[0], zero_point.shape[0])
    cdef int status = 0
    if outer * channels * inner:
        with nogil:
            status = _dequantize_axis(&q[0, 0, 0], outer, channels, inner, &scale[0],
                                      &zero_point[0], &out[0, 0, 0])
    if status:
        raise MemoryError()


cdef _check_axis_args(Py_ssize_t* shape, Py_ssize_t* out_shape, Py_ssize_t n_scale,
                      Py_ssize_t n_zero_point):
    """boundscheck is off in the loops: sizes are checked here, once."""
    if out_shape[0] != shape[0] or out_shape[1] != shape[1] or out_shape[2] != shape[2]:
        raise ValueError("out must have the input's shape")
    if n_scale != shape[1] or n_zero_point != shape[1]:
        raise ValueError(f"scale and zero_point must have {shape[1]} values (one per channel)")


# ---------------------------------------------------------------------------------------------
# softmax_topk

cdef inline double _exp_nonpositive(double d) noexcept nogil:
    """exp(d) for d <= 0: the fallback's exp_nonpositive, operation for operation (the same
    double constants, separate multiplies and adds, an exact scaling by 2**n). Branch-free,
    so a loop over it vectorizes; NaN gives 0, as -inf does.

    rint(t) is computed as (t + 1.5 * 2**52) - 1.5 * 2**52, exact for |t| < 2**51 (the
    quantize trick in double), and the sum's bit pattern minus the magic number's is n itself,
    from which 2**n's exponent field is built without a float-to-int conversion.
    """
    cdef double magic = 6755399441055744.0  # 1.5 * 2**52
    cdef double dc = d if d >= -708.0 else -708.0  # EXP_MIN
    cdef double t = dc * 1.4426950408889634 + magic  # LOG2E
    cdef double n = t - magic
    cdef double r, p, two_n
    cdef uint64_t t_bits, magic_bits, bits
    r = dc - n * 0.6931471803691238  # LN2_HI
    r = r - n * 1.9082149292705877e-10  # LN2_LO
    p = 2.08767569878681e-09  # EXP_POLY: 1/k!, k = 12 .. 0
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    memcpy(&t_bits, &t, sizeof(double))
    memcpy(&magic_bits, &magic, sizeof(double))
    bits = (t_bits - magic_bits + 1023) << 52  # 2**n, n in [-1021, 0]: a normal double
    memcpy(&two_n, &bits, sizeof(double))
    return p * two_n if d >= -708.0 else 0.0


cdef void _exp_many(double* d, Py_ssize_t n) noexcept nogil:
    """d[i] = _exp_nonpositive(d[i]), in place."""
    cdef Py_ssize_t i
    for i in range(n):
        d[i] = _exp_nonpositive(d[i])


cdef inline bint _ranks_below(float va, int64_t ia, float vb, int64_t ib) noexcept nogil:
    """Whether (va, ia) ranks below (vb, ib): smaller value, or equal value and higher index."""
    return va < vb or (va == vb and ia > ib)


cdef inline void _sift_down(float* hv, int64_t* hi, Py_ssize_t size, float v,
                            int64_t i) noexcept nogil:
    """Put (v, i) at the root of the min-heap hv/hi[:size] and restore the heap property."""
    cdef Py_ssize_t j = 0, c
    while True:
        c = 2 * j + 1
        if c >= size:
            break
        if c + 1 < size and _ranks_below(hv[c + 1], hi[c + 1], hv[c], hi[c]):
            c += 1
        if not _ranks_below(hv[c], hi[c], v, i):
            break
        hv[j] = hv[c]
        hi[j] = hi[c]
        j = c
    hv[j] = v
    hi[j] = i


cdef inline void _sift_up(float* hv, int64_t* hi, Py_ssize_t j, float v,
                          int64_t i) noexcept nogil:
    """Put (v, i) at slot j (the heap's new last slot) and move it up to its place."""
    cdef Py_ssize_t parent
    while j > 0:
        parent = (j - 1) // 2
        if not _ranks_below(v, i, hv[parent], hi[parent]):
            break
        hv[j] = hv[parent]
        hi[j] = hi[parent]
        j = parent
    hv[j] = v
    hi[j] = i


cdef void _softmax_topk_row(const float* row, Py_ssize_t n, Py_ssize_t k, int64_t* indices,
                            float* probs, float* hv, int64_t* hi, double* e) noexcept nogil:
    """One row: top-k by a k-element min-heap of the best so far (O(n log k), not a sort),
    then the softmax in double exactly as the fallback computes it, exps into e[:n]."""
    cdef Py_ssize_t i, j, size = 0
    cdef float v, m = -INFINITY
    cdef double md, total = 0.0
    for i in range(n):
        v = row[i]
        if v != v:
            v = -INFINITY  # NaN ranks as -inf
        if v > m:
            m = v
        if size < k:
            _sift_up(hv, hi, size, v, i)
            size += 1
        elif _ranks_below(hv[0], hi[0], v, i):
            _sift_down(hv, hi, size, v, i)
    # No finite logit: shift by 0, so every exp is of -inf (or NaN): 0, and so is the total.
    md = m if m > -INFINITY else 0.0
    for i in range(n):
        e[i] = <double>row[i] - md  # a NaN logit stays NaN here, and its exp is 0
    _exp_many(e, n)
    for i in range(n):  # in index order, like the fallback's cumsum
        total += e[i]
    if total == 0.0:
        total = 1.0
    for j in range(k - 1, -1, -1):  # pop the lowest-ranked first: fills the output backwards
        indices[j] = hi[0]
        probs[j] = <float>(e[hi[0]] / total)
        size -= 1
        if size > 0:
            _sift_down(hv, hi, size, hv[size], hi[size])


def softmax_topk(const float[:, ::1] logits, Py_ssize_t k, int64_t[:, ::1] indices,
                 float[:, ::1] probs):
    """Per row: top-k indices (ties: lower index first; NaN ranks as -inf) and their
    probabilities under the softmax over the whole row; see the fallback for the arithmetic."""
    cdef Py_ssize_t b, rows = logits.shape[0], n = logits.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if (indices.shape[0] != rows or indices.shape[1] != k or probs.shape[0] != rows
            or probs.shape[1] != k):
        raise ValueError(f"indices and probs must have shape ({rows}, {k})")
    if rows == 0:
        return
    cdef float* hv = <float*>malloc(k * sizeof(float))
    cdef int64_t* hi = <int64_t*>malloc(k * sizeof(int64_t))
    cdef double* e = <double*>malloc(n * sizeof(double))
    try:
        if hv == NULL or hi == NULL or e == NULL:
            raise MemoryError()
        with nogil:
            for b in range(rows):
                _softmax_topk_row(&logits[b, 0], n, k, &indices[b, 0], &probs[b, 0], hv, hi, e)
    finally:
        free(hv)
        free(hi)
        free(e)


# ---------------------------------------------------------------------------------------------
# resize_normalize(_quantize)

cdef void _blend_row(const unsigned char* row, Py_ssize_t channels, Py_ssize_t out_w,
                     const Py_ssize_t* x0, const Py_ssize_t* x1, const float* wx0,
                     const float* wx1, Py_ssize_t step_x, Py_ssize_t step_c,
                     float* dst) noexcept nogil:
    """Horizontal pass over one source row: dst[ox * step_x + c * step_c] =
    p[x0] * wx0 + p[x1] * wx1 (float32), laid out like one output row."""
    cdef Py_ssize_t ox, c, a, b
    cdef float w0, w1
    for ox in range(out_w):
        a = x0[ox] * channels
        b = x1[ox] * channels
        w0 = wx0[ox]
        w1 = wx1[ox]
        for c in range(channels):
            dst[ox * step_x + c * step_c] = <float>row[a + c] * w0 + <float>row[b + c] * w1


cdef void _vertical(const float* top, const float* bottom, const float* gain,
                    const float* offset, float wa, float wb, Py_ssize_t n,
                    float* out) noexcept nogil:
    """out = (top * wa + bottom * wb) * gain + offset, element-wise in float32."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = (top[i] * wa + bottom[i] * wb) * gain[i] + offset[i]


cdef void _vertical_quantize(const float* top, const float* bottom, const float* gain,
                             const float* offset, float wa, float wb, Py_ssize_t n, float scale,
                             int zero_point, signed char* out) noexcept nogil:
    """_vertical, then quantize each value."""
    cdef Py_ssize_t i
    cdef float lo = <float>(-128 - zero_point), hi = <float>(127 - zero_point)
    for i in range(n):
        out[i] = _quantize_one((top[i] * wa + bottom[i] * wb) * gain[i] + offset[i], scale,
                               lo, hi, zero_point)


cdef int _resize(const unsigned char* image, Py_ssize_t in_w, Py_ssize_t channels,
                 Py_ssize_t out_h, Py_ssize_t out_w, const Py_ssize_t* y0, const Py_ssize_t* y1,
                 const float* wy0, const float* wy1, const Py_ssize_t* x0, const Py_ssize_t* x1,
                 const float* wx0, const float* wx1, const float* gain, const float* offset,
                 bint chw, float* out_f, signed char* out_q, float scale,
                 int zero_point) noexcept nogil:
    """Both resize kernels: float output into out_f, or (out_f NULL) quantized into out_q.

    Per output row: the two source rows are blended horizontally into buffers laid out like
    the output row (kept while consecutive output rows use the same source row), then one
    contiguous, vectorizable pass per run blends them vertically, normalizes (gain and offset
    tiled to the same layout) and quantizes. In chw a row is `channels` runs of out_w values,
    one per output plane; in hwc it is one run. -1 if out of memory.
    """
    cdef Py_ssize_t n = out_w * channels, oy, ox, c, r, j, dst
    cdef Py_ssize_t step_x = 1 if chw else channels, step_c = out_w if chw else 1
    cdef Py_ssize_t runs = channels if chw else 1, run = out_w if chw else n
    cdef Py_ssize_t top_row = -1, bottom_row = -1
    cdef float* buf = <float*>malloc(4 * n * sizeof(float))
    cdef float* top
    cdef float* bottom
    cdef float* g
    cdef float* o
    if buf == NULL:
        return -1
    top, bottom, g, o = buf, buf + n, buf + 2 * n, buf + 3 * n
    for ox in range(out_w):
        for c in range(channels):
            g[ox * step_x + c * step_c] = gain[c]
            o[ox * step_x + c * step_c] = offset[c]
    for oy in range(out_h):
        if y0[oy] != top_row:
            top_row = y0[oy]
            _blend_row(image + top_row * in_w * channels, channels, out_w, x0, x1, wx0, wx1,
                       step_x, step_c, top)
        if y1[oy] != bottom_row:
            bottom_row = y1[oy]
            _blend_row(image + bottom_row * in_w * channels, channels, out_w, x0, x1, wx0, wx1,
                       step_x, step_c, bottom)
        for r in range(runs):
            j = r * run  # this run's place in the row buffers
            dst = r * out_h * out_w + oy * out_w if chw else oy * n
            if out_q == NULL:
                _vertical(top + j, bottom + j, g + j, o + j, wy0[oy], wy1[oy], run, out_f + dst)
            else:
                _vertical_quantize(top + j, bottom + j, g + j, o + j, wy0[oy], wy1[oy], run,
                                   scale, zero_point, out_q + dst)
    free(buf)
    return 0


cdef _check_resize_args(const unsigned char[:, :, ::1] image, const Py_ssize_t[::1] y0,
                        const Py_ssize_t[::1] y1, const float[::1] wy0, const float[::1] wy1,
                        const Py_ssize_t[::1] x0, const Py_ssize_t[::1] x1, const float[::1] wx0,
                        const float[::1] wx1, const float[::1] gain, const float[::1] offset,
                        bint chw, Py_ssize_t* out_shape):
    """boundscheck is off in the loops: table sizes and every source index are checked here
    (O(out_h + out_w), nothing next to the resize itself)."""
    cdef Py_ssize_t out_h = y0.shape[0], out_w = x0.shape[0], channels = image.shape[2], i
    if (y1.shape[0] != out_h or wy0.shape[0] != out_h or wy1.shape[0] != out_h
            or x1.shape[0] != out_w or wx0.shape[0] != out_w or wx1.shape[0] != out_w):
        raise ValueError("the row tables and the column tables must each have one length")
    if gain.shape[0] != channels or offset.shape[0] != channels:
        raise ValueError(f"gain and offset must have {channels} values (one per channel)")
    expected = (channels, out_h, out_w) if chw else (out_h, out_w, channels)
    if (out_shape[0], out_shape[1], out_shape[2]) != expected:
        raise ValueError(f"out must have shape {expected}")
    for i in range(out_h):
        if not (0 <= y0[i] < image.shape[0] and 0 <= y1[i] < image.shape[0]):
            raise ValueError("row index out of range")
    for i in range(out_w):
        if not (0 <= x0[i] < image.shape[1] and 0 <= x1[i] < image.shape[1]):
            raise ValueError("column index out of range")


def resize_normalize(const unsigned char[:, :, ::1] image, const Py_ssize_t[::1] y0,
                     const Py_ssize_t[::1] y1, const float[::1] wy0, const float[::1] wy1,
                     const Py_ssize_t[::1] x0, const Py_ssize_t[::1] x1, const float[::1] wx0,
                     const float[::1] wx1, const float[::1] gain, const float[::1] offset,
                     bint chw, float[:, :, ::1] out):
    """Bilinear resize by the given tables, then v * gain[c] + offset[c]; see the fallback."""
    _check_resize_args(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset, chw,
                       out.shape)
    cdef int status = 0
    if out.shape[0] * out.shape[1] * out.shape[2]:
        with nogil:
            status = _resize(&image[0, 0, 0], image.shape[1], image.shape[2], y0.shape[0],
                             x0.shape[0], &y0[0], &y1[0], &wy0[0], &wy1[0], &x0[0], &x1[0],
                             &wx0[0], &wx1[0], &gain[0], &offset[0], chw, &out[0, 0, 0], NULL,
                             1.0, 0)
    if status:
        raise MemoryError()


def resize_normalize_quantize(const unsigned char[:, :, ::1] image, const Py_ssize_t[::1] y0,
                              const Py_ssize_t[::1] y1, const float[::1] wy0,
                              const float[::1] wy1, const Py_ssize_t[::1] x0,
                              const Py_ssize_t[::1] x1, const float[::1] wx0,
                              const float[::1] wx1, const float[::1] gain,
                              const float[::1] offset, float scale, int zero_point, bint chw,
                              signed char[:, :, ::1] out):
    """resize_normalize, then quantize(scale, zero_point), fused into one pass."""
    _check_resize_args(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset, chw,
                       out.shape)
    cdef int status = 0
    if out.shape[0] * out.shape[1] * out.shape[2]:
        with nogil:
            status = _resize(&image[0, 0, 0], image.shape[1], image.shape[2], y0.shape[0],
                             x0.shape[0], &y0[0], &y1[0], &wy0[0], &wy1[0], &x0[0], &x1[0],
                             &wx0[0], &wx1[0], &gain[0], &offset[0], chw, NULL, &out[0, 0, 0],
                             scale, zero_point)
    if status:
        raise MemoryError()


# ---------------------------------------------------------------------------------------------
# window_features

cdef void _window(const float* x, Py_ssize_t n, float* out) noexcept nogil:
    """mean, std, min, max, rms of x[:n] (n >= 1), exactly as the fallback: float64 sums in
    index order starting from the first term, two-pass std, extremes plus 0.0."""
    cdef Py_ssize_t i
    cdef float f, lo = x[0], hi = x[0], zero = 0
    cdef double v = x[0], s = v, q = v * v, mean, d, ss
    for i in range(1, n):
        f = x[i]
        v = f
        s = s + v
        q = q + v * v
        lo = f if f < lo else lo
        hi = f if f > hi else hi
    mean = s / <double>n
    d = <double>x[0] - mean
    ss = d * d
    for i in range(1, n):
        d = <double>x[i] - mean
        ss = ss + d * d
    out[0] = <float>mean
    out[1] = <float>sqrt(ss / <double>n)
    out[2] = lo + zero
    out[3] = hi + zero
    out[4] = <float>sqrt(q / <double>n)


def window_features(const float[::1] signal, Py_ssize_t window, Py_ssize_t hop,
                    float[:, ::1] out):
    """One row of out per window (starts 0, hop, 2 hop, ...): mean, std, min, max, rms.
    Returns whether every window's samples were finite (its rms is), for the public API."""
    cdef Py_ssize_t w, count = out.shape[0]
    cdef bint finite = True
    if window < 1 or hop < 1:
        raise ValueError("window and hop must be >= 1")
    if out.shape[1] != 5 or (count and (count - 1) * hop + window > signal.shape[0]):
        raise ValueError(f"out has {count} rows of {out.shape[1]}: more windows than the "
                         "signal holds, or not 5 features")
    with nogil:
        for w in range(count):
            _window(&signal[w * hop], window, &out[w, 0])
            finite &= out[w, 4] < INFINITY  # rms >= 0: false for inf and NaN
    return finite


# ---------------------------------------------------------------------------------------------
# import-time self-test

cdef _refuse(str what, got, expected):
    raise ImportError(
        f"edgeagent.kernels._compiled: {what} gave {got!r}, expected {expected!r}: this build "
        "does not compute like the NumPy reference (float32 evaluated in wider precision, "
        "fused multiply-add, or -ffast-math?)")


cdef _self_test():
    """Results worked out by hand or by the reference, with each kernel's rounding-sensitive
    steps exercised (quantize ties, bounds and specials through both the vector body and the
    scalar tail; exp's reduction and polynomial; the sums and blends of features and resize).
    A mismatch means this compiler or platform evaluates differently (x87 excess precision,
    reassociation, FMA contraction, a changed rounding mode): refuse to load so the NumPy
    fallback is used instead."""
    cdef float x[19]
    cdef signed char q[19]
    cdef float feats[5]
    cdef double e[18]
    cdef Py_ssize_t i
    cases = [  # (x, scale, zero_point, expected)
        (0.5, 1.0, 0, 0), (1.5, 1.0, 0, 2), (2.5, 1.0, 0, 2), (3.5, 1.0, 0, 4),
        (-0.5, 1.0, 0, 0), (-1.5, 1.0, 0, -2), (-2.5, 1.0, 0, -2), (-3.5, 1.0, 0, -4),
        (0.49999997, 1.0, 0, 0), (5.0, 2.0, 1, 3), (7.0, 2.0, -1, 3), (-0.0, 1.0, 0, 0),
        (122.5, 1.0, 3, 125), (123.5, 1.0, 3, 127), (124.5, 1.0, 3, 127), (1e30, 1.0, 3, 127),
        (-130.5, 1.0, 2, -128), (-129.5, 1.0, 2, -128), (-1e30, 0.5, 7, -128),
        (INFINITY, 0.5, -7, 127), (-INFINITY, 0.5, -7, -128), (NAN, 1.0, 5, 5),
        (1e-45, 1e-3, -9, -9), (8388609.0, 1.0, 0, 127),
    ]
    for value, scale, zero_point, expected in cases:
        for i in range(19):
            x[i] = value
        _quantize(x, 19, scale, zero_point, q)
        for i in range(19):
            if q[i] != expected:
                _refuse(f"quantize({value}, {scale}, {zero_point})", q[i], expected)
    for i, (d, _) in enumerate(_EXP_CASES):  # 18: through the vector body and the tail
        e[i] = d
    _exp_many(e, len(_EXP_CASES))
    for i, (d, expected) in enumerate(_EXP_CASES):
        if e[i] != float.fromhex(expected):
            _refuse(f"exp({d!r})", e[i].hex(), expected)
    for i in range(19):
        x[i] = 0.1 * (i % 7) - 0.37 * (i % 3) + 1.7
    _window(x, 19, feats)
    for i in range(5):
        if feats[i] != float.fromhex(_WINDOW_EXPECTED[i]):
            _refuse(f"window feature {i}", (<double>feats[i]).hex(), _WINDOW_EXPECTED[i])
    _resize_self_test()


cdef _resize_self_test():
    """A 2x3 two-channel image to 2x3, hwc, with hand-made tables whose weights round."""
    cdef unsigned char image[12]
    cdef Py_ssize_t ys0[2]
    cdef Py_ssize_t ys1[2]
    cdef Py_ssize_t xs0[3]
    cdef Py_ssize_t xs1[3]
    cdef float wy0[2]
    cdef float wy1[2]
    cdef float wx0[3]
    cdef float wx1[3]
    cdef float gain[2]
    cdef float offset[2]
    cdef float out[12]
    cdef Py_ssize_t i
    for i in range(12):
        image[i] = (37 * i + 11) % 256
    ys0[:] = [0, 0]
    ys1[:] = [1, 1]
    wy0[:] = [0.7, 0.1]
    wy1[:] = [0.3, 0.9]
    xs0[:] = [0, 1, 1]
    xs1[:] = [1, 2, 2]
    wx0[:] = [0.6, 0.3, 0.0]
    wx1[:] = [0.4, 0.7, 1.0]
    gain[:] = [1 / 255.0 / 0.229, 1 / 255.0 / 0.224]
    offset[:] = [-0.485 / 0.229, -0.456 / 0.224]
    if _resize(image, 3, 2, 2, 3, ys0, ys1, wy0, wy1, xs0, xs1, wx0, wx1, gain, offset, False,
               out, NULL, 1.0, 0):
        raise MemoryError()
    for i in range(12):
        if out[i] != float.fromhex(_RESIZE_EXPECTED[i]):
            _refuse(f"resize value {i}", (<double>out[i]).hex(), _RESIZE_EXPECTED[i])


# Reference results (edgeagent.kernels._fallback) for the self-test, as exact hex floats.
_EXP_CASES = [
    (-1.0, '0x1.78b56362cef38p-2'), (-0.5, '0x1.368b2fc6f960ap-1'),
    (-0.001, '0x1.ff7cfe56f1a9ep-1'), (-2.302585092994046, '0x1.9999999999998p-4'),
    (-10.0, '0x1.7cd79b5647c9bp-15'), (-37.5, '0x1.dd5c566301ec8p-55'),
    (-88.72283905206835, '0x1.0000010000015p-128'), (-100.25, '0x1.4acd31e167ebbp-145'),
    (-300.3, '0x1.b1230ad551394p-434'), (-700.0, '0x1.14f2b0fb9307fp-1010'),
    (-0.34657359027997264, '0x1.6a09e667f3bcep-1'), (-0.3465735902799727, '0x1.6a09e667f3bccp-1'),
    (-5e-324, '0x1.0p+0'), (-0.0, '0x1.0p+0'), (-707.99, '0x1.805dc5256f58dp-1022'),
    (-708.5, '0x0.0p+0'), (-INFINITY, '0x0.0p+0'), (NAN, '0x0.0p+0'),
]
_WINDOW_EXPECTED = ['0x1.9f87460000000p+0', '0x1.82c9ac0000000p-2', '0x1.eb851e0000000p-1',
                    '0x1.2666660000000p+1', '0x1.aaa1960000000p+0']
_RESIZE_EXPECTED = [
    '-0x1.9dccc40000000p-1', '-0x1.b623dc0000000p-1', '0x1.9a56000000000p-5',
    '0x1.a828300000000p-1', '0x1.b895e00000000p-2', '0x1.3793040000000p+0',
    '0x1.aec3f00000000p-2', '-0x1.367fa40000000p+0', '-0x1.326ff00000000p-2',
    '0x1.e299700000000p-2', '0x1.4b6cc00000000p-4', '0x1.b84a980000000p-1',
]

_self_test()
