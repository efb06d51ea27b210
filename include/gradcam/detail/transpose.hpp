// Transposing a block of a matrix: how products computed pixel-major get back to channels-first.
// With AVX-512, float goes by 16 x 16 tiles held in registers: 16 row loads, four rounds of
// shuffles, 16 row stores. Element by element, each value is loaded on its own from a different
// row of the source (Eigen's transposed assignment did so too), and those transposes took 3.5%
// of a ResNet-50 Grad-CAM.
#pragma once

#include <algorithm>
#include <type_traits>

#if defined(__GNUC__) && defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "gradcam/tensor.hpp"

namespace gradcam::detail {

// The tiled and the element-by-element forms are different code under one name: translation
// units built with and without AVX-512 get differently named copies (as detail/gemm.hpp's do).
#if defined(__GNUC__) && defined(__AVX512F__)
inline namespace transpose_vector64 {

// dst's rows 0..cols-1 (ld_dst apart) = columns 0..cols-1 of src's rows 0..rows-1 (ld_src
// apart), or += with `accumulate`; rows and cols are at most 16. A partial tile reads and writes
// through masks, so that the edges of a block go by vectors too.
inline void transpose_tile16(const float* src, index_t ld_src, float* dst, index_t ld_dst,
                             bool accumulate, index_t rows = 16, index_t cols = 16) {
    __m512 r[16], s[16];
    const __mmask16 in_mask = static_cast<__mmask16>((1u << cols) - 1);
    const __mmask16 out_mask = static_cast<__mmask16>((1u << rows) - 1);
    for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(in_mask, src + i * ld_src) : _mm512_setzero_ps();
    // Within each 128-bit lane (columns 4L..4L+3): interleave rows 2a and 2a+1 ...
    for (int a = 0; a < 8; ++a) {
        s[2 * a] = _mm512_unpacklo_ps(r[2 * a], r[2 * a + 1]);      // columns 4L, 4L+1
        s[2 * a + 1] = _mm512_unpackhi_ps(r[2 * a], r[2 * a + 1]);  // columns 4L+2, 4L+3
    }
    // ... then pairs of those: lane L of r[4b + e] holds column 4L+e, rows 4b..4b+3.
    for (int b = 0; b < 4; ++b)
        for (int half = 0; half < 2; ++half) {
            const __m512d x = _mm512_castps_pd(s[4 * b + half]);
            const __m512d y = _mm512_castps_pd(s[4 * b + 2 + half]);
            r[4 * b + 2 * half] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            r[4 * b + 2 * half + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    // Column 4L+e gathers lane L of r[e], r[4 + e], r[8 + e], r[12 + e]: a 4 x 4 transpose of
    // lanes, in two rounds.
    for (int e = 0; e < 4; ++e) {
        // Lanes 0 and 1 of both operands (0x44), or lanes 2 and 3 (0xEE) ...
        const __m512 w0 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x44);
        const __m512 w1 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xEE);
        const __m512 w2 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x44);
        const __m512 w3 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xEE);
        // ... then lanes 0 and 2 of both (0x88), or lanes 1 and 3 (0xDD).
        const __m512 column[4] = {
            _mm512_shuffle_f32x4(w0, w2, 0x88), _mm512_shuffle_f32x4(w0, w2, 0xDD),
            _mm512_shuffle_f32x4(w1, w3, 0x88), _mm512_shuffle_f32x4(w1, w3, 0xDD)};
        for (int L = 0; L < 4 && 4 * L + e < cols; ++L) {
            float* out = dst + (4 * L + e) * ld_dst;
            const __m512 value =
                accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(out_mask, out), column[L])
                           : column[L];
            _mm512_mask_storeu_ps(out, out_mask, value);
        }
    }
}
#else
inline namespace transpose_portable {
#endif

// dst (n x m, rows ld_dst apart) = src^T, or += with `accumulate`; src is m x n, rows ld_src
// apart.
template <class T>
void transpose_block(const T* src, index_t ld_src, index_t m, index_t n, T* dst, index_t ld_dst,
                     bool accumulate) {
#if defined(__GNUC__) && defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
        for (index_t j = 0; j < n; j += 16)
            for (index_t i = 0; i < m; i += 16)
                transpose_tile16(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                 accumulate, std::min<index_t>(16, m - i),
                                 std::min<index_t>(16, n - j));
        return;
    }
#endif
    for (index_t j = 0; j < n; ++j)
        for (index_t i = 0; i < m; ++i) {
            T& out = dst[j * ld_dst + i];
            out = accumulate ? out + src[i * ld_src + j] : src[i * ld_src + j];
        }
}

}  // inline namespace
}  // namespace gradcam::detail
