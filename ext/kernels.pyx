# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Compiled kernels: twins of ``edgeagent/kernels/_fallback.py``, which is the specification.

Typed memoryviews and C pointers only, no ``cimport numpy``: the extension does not depend on
NumPy's C API or ABI, so one build keeps working across NumPy upgrades. All quantization
arithmetic is float32, as ONNX specifies. NaN and inf are handled explicitly, so the build
flags that let the loops vectorize (-fno-math-errno -fno-trapping-math, no -ffast-math) change
no result. Import fails (and ``edgeagent.kernels`` falls back to NumPy) if a self-test finds
that this build does not round exactly like NumPy.
"""

from libc.math cimport INFINITY, NAN, exp
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc


cdef void _quantize(const float* x, Py_ssize_t n, float scale, int zero_point,
                    signed char* out) noexcept nogil:
    """The loop behind quantize. Branch-free (selects, no libm call) so it vectorizes.

    Same result as the fallback's divide / rint / add zero_point / saturate, because:
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
    cdef Py_ssize_t i
    cdef float v
    cdef float zero = 0
    cdef float lo = <float>(-128 - zero_point)
    cdef float hi = <float>(127 - zero_point)
    cdef float magic = 12582912.0  # 1.5 * 2**23
    for i in range(n):
        v = x[i] / scale
        v = v if v == v else zero
        v = lo if v < lo else v
        v = hi if v > hi else v
        v = (v + magic) - magic
        out[i] = <signed char>(<int>v + zero_point)


cdef void _dequantize(const signed char* q, Py_ssize_t n, float scale, int zero_point,
                      float* out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = <float>(<int>q[i] - zero_point) * scale


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
                            float* probs, float* hv, int64_t* hi) noexcept nogil:
    """One row: top-k by a k-element min-heap of the best so far (O(n log k), not a sort),
    then the softmax in double exactly as the fallback computes it."""
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
    if m == -INFINITY:  # no finite logit: no softmax, probabilities 0
        md = 0.0
    else:
        md = m
        for i in range(n):  # in index order, like the fallback's cumsum
            v = row[i]
            if v == v:  # NaN adds exp(-inf) = 0
                total += exp(<double>v - md)
    if total == 0.0:
        total = 1.0
    for j in range(k - 1, -1, -1):  # pop the lowest-ranked first: fills the output backwards
        indices[j] = hi[0]
        probs[j] = <float>(exp(<double>hv[0] - md) / total)
        size -= 1
        if size > 0:
            _sift_down(hv, hi, size, hv[size], hi[size])


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


def dequantize(const signed char[::1] q, float scale, int zero_point, float[::1] out):
    """out = float32(int32(q) - zero_point) * scale."""
    cdef Py_ssize_t n = q.shape[0]
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} elements, q has {n}")
    if n:
        with nogil:
            _dequantize(&q[0], n, scale, zero_point, &out[0])


def softmax_topk(const float[:, ::1] logits, Py_ssize_t k, int64_t[:, ::1] indices,
                 float[:, ::1] probs):
    """Per row: top-k indices (ties: lower index first; NaN ranks as -inf) and their
    probabilities under the softmax over the whole row. See the fallback for the exact
    arithmetic; exp here is the C library's, so probabilities match it to 1e-6."""
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
    try:
        if hv == NULL or hi == NULL:
            raise MemoryError()
        with nogil:
            for b in range(rows):
                _softmax_topk_row(&logits[b, 0], n, k, &indices[b, 0], &probs[b, 0], hv, hi)
    finally:
        free(hv)
        free(hi)


cdef _self_test():
    """Quantize ties, bounds and specials, each through the vector body and the scalar tail,
    and compare with values worked out by hand. A mismatch means this compiler or platform
    evaluates the rounding trick differently (x87 excess precision, reassociation, a changed
    rounding mode): refuse to load so the NumPy fallback is used instead."""
    cdef float x[19]
    cdef signed char q[19]
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
                raise ImportError(
                    f"edgeagent.kernels._compiled: quantize({value}, {scale}, {zero_point}) "
                    f"gave {q[i]}, expected {expected}: this build does not round like "
                    "NumPy (float32 evaluated in wider precision, or -ffast-math?)")


_self_test()
