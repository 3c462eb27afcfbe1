# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: bit-exact twins of ``edgeagent/kernels/_fallback.py`` (the reference).

Typed memoryviews only, no NumPy C-API: the extension does not depend on NumPy's ABI.
Everything is float32 arithmetic, as ONNX specifies; NaN and inf are handled explicitly, so
the flags that let loops vectorize (-fno-math-errno -fno-trapping-math) change no result.
"""

from libc.math cimport exp

import numpy as np


def quantize(const float[::1] x, float scale, int zero_point, signed char[::1] out):
    """q = saturate(round_half_to_even(x / scale) + zero_point); NaN -> zero_point.

    Branch-free so the loop vectorizes (a libm rounding call per element made it 5x slower
    than NumPy on large arrays). NaN becomes 0 before anything else, so it lands on the zero
    point. Clamping to [-128 - zp, 127 - zp] before rounding gives the same result as
    saturating after it (the bounds are integers). Within that range, adding and subtracting
    1.5 * 2**23 rounds half to even in float32 (the default rounding mode), exactly.
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef float v
    cdef float lo = <float>(-128 - zero_point)
    cdef float hi = <float>(127 - zero_point)
    cdef float magic = 12582912.0
    with nogil:
        for i in range(n):
            v = x[i] / scale
            v = 0.0 if v != v else v
            v = lo if v < lo else v
            v = hi if v > hi else v
            v = (v + magic) - magic
            out[i] = <signed char>(<int>v + zero_point)


def dequantize(const signed char[::1] q, float scale, int zero_point, float[::1] out):
    """(q - zero_point) * scale in float32."""
    cdef Py_ssize_t i, n = q.shape[0]
    with nogil:
        for i in range(n):
            out[i] = <float>(<int>q[i] - zero_point) * scale


def softmax_topk(const float[:, ::1] logits, int k, long long[:, ::1] indices,
                 float[:, ::1] probs):
    """Per row: the k largest logits (ties: lower index first; NaN never wins) and their
    probabilities under the softmax over the whole row (max subtracted first).

    exp is taken in double and rounded to float32, like the fallback: float32 exp differs
    between libm and NumPy in the last bit, a double result rounded to float32 does not."""
    cdef Py_ssize_t b, i, j, n = logits.shape[1], rows = logits.shape[0]
    cdef Py_ssize_t best
    cdef float m, v, total, bv
    cdef float neg_inf = -np.inf
    cdef unsigned char[::1] taken = np.zeros(n, dtype=np.uint8)
    with nogil:
        for b in range(rows):
            m = neg_inf
            for i in range(n):
                v = logits[b, i]
                if v > m:  # False for NaN
                    m = v
            total = 0.0
            for i in range(n):
                v = logits[b, i]
                if v == v and m > neg_inf:
                    total = total + <float>exp(<double>(v - m))
            for i in range(n):
                taken[i] = 0
            for j in range(k):
                best = -1
                bv = neg_inf
                for i in range(n):
                    v = logits[b, i]
                    if v != v:
                        v = neg_inf
                    if not taken[i] and (best < 0 or v > bv):
                        best = i
                        bv = v
                taken[best] = 1
                indices[b, j] = best
                if bv == neg_inf or total == 0.0:
                    probs[b, j] = 0.0
                else:
                    probs[b, j] = <float>exp(<double>(bv - m)) / total
