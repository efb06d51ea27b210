// 3x3 convolution with unit stride by Winograd's minimal filtering F(m x m, 3x3) (Lavin and
// Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). Each m x m block of
// outputs comes from the (m + 2) x (m + 2) input tile d under it:
//     Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,
// (m + 2)^2 multiplications where the direct form needs 9 m^2. Summed over input channels, the
// elementwise product becomes (m + 2)^2 independent matrix products, one per tile position e:
//     M_e[k, tile] = sum_c U_e[k, c] V_e[c, tile],   U = G g G^T,  V = B^T d B,
// which detail::gemm computes. Two forms: F(2x2, 3x3), 16 products for 4 outputs (2.25 times
// fewer multiplications), whose transforms are additions and halvings, so that it differs from
// the direct sum by rounding alone; and F(4x4, 3x3), 36 for 16 (4 times fewer), whose
// transforms scale by up to 8 and 1/24 and round a few times more (in float, about 1e-6 of the
// output's scale against 3e-7).
#pragma once

#include <algorithm>
#include <vector>

#include "gradcam/detail/gemm.hpp"
#include "gradcam/detail/im2col.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/transpose.hpp"
#include "gradcam/detail/vectorize.hpp"

namespace gradcam::detail {

// The forms, each as its three one-dimensional transforms: the two-dimensional ones apply them
// along rows, then along columns. Each reads its inputs as in(i) and writes its outputs by
// out(i, value), so that one formula serves a tile's values wherever they lie.

// F(2x2, 3x3), interpolation points 0, 1, -1 and infinity:
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],   A^T = [1 1 1 0; 0 1 -1 -1].
struct WinogradF2 {
    static constexpr index_t m = 2, t = 4, positions = t * t;

    template <class T, class In, class Out>
    static void kernel(In g, Out u) {  // u = G g
        const T g0 = g(0), g1 = g(1), g2 = g(2);
        u(0, g0);
        u(1, T(0.5) * (g0 + g1 + g2));
        u(2, T(0.5) * (g0 - g1 + g2));
        u(3, g2);
    }
    template <class T, class In, class Out>
    static void input(In d, Out v) {  // v = B^T d
        const T d0 = d(0), d1 = d(1), d2 = d(2), d3 = d(3);
        v(0, d0 - d2);
        v(1, d1 + d2);
        v(2, d2 - d1);
        v(3, d1 - d3);
    }
    template <class T, class In, class Out>
    static void output(In s, Out y) {  // y = A^T s
        const T s0 = s(0), s1 = s(1), s2 = s(2), s3 = s(3);
        y(0, s0 + s1 + s2);
        y(1, s1 - s2 - s3);
    }
};

// F(4x4, 3x3), points 0, 1, -1, 2, -2 and infinity:
//   G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
struct WinogradF4 {
    static constexpr index_t m = 4, t = 6, positions = t * t;

    template <class T, class In, class Out>
    static void kernel(In g, Out u) {
        const T g0 = g(0), g1 = g(1), g2 = g(2);
        const T outer = g0 + g2;
        u(0, g0 / T(4));
        u(1, -(outer + g1) / T(6));
        u(2, -(outer - g1) / T(6));
        u(3, (g0 / T(4) + g1 / T(2) + g2) / T(6));
        u(4, (g0 / T(4) - g1 / T(2) + g2) / T(6));
        u(5, g2);
    }
    template <class T, class In, class Out>
    static void input(In d, Out v) {
        const T d0 = d(0), d1 = d(1), d2 = d(2), d3 = d(3), d4 = d(4), d5 = d(5);
        v(0, T(4) * d0 - T(5) * d2 + d4);
        v(1, d3 + d4 - T(4) * (d1 + d2));
        v(2, d4 - d3 + T(4) * (d1 - d2));
        v(3, d4 - d2 + T(2) * (d3 - d1));
        v(4, d4 - d2 - T(2) * (d3 - d1));
        v(5, T(4) * d1 - T(5) * d3 + d5);
    }
    template <class T, class In, class Out>
    static void output(In s, Out y) {
        const T s0 = s(0), s1 = s(1), s2 = s(2), s3 = s(3), s4 = s(4), s5 = s(5);
        const T even = s1 + s2, odd = s1 - s2, even_far = s3 + s4, odd_far = s3 - s4;
        y(0, s0 + even + even_far);
        y(1, odd + T(2) * odd_far);
        y(2, even + T(4) * even_far);
        y(3, odd + T(8) * odd_far + s5);
    }
};

// Below these channel counts the products are too thin for the transforms to pay off; below
// this many tiles of 2x2 outputs (maps under about 22x22), products U_e V_e as they stand are
// too narrow and the transformed kernels (16/9 or 4 times the weights) are used too few times
// each to pay for making and packing them (measured with F(2x2, 3x3) on ResNet and VGG layers:
// 28x28 outputs gain, 14x14 lose; F(4x4, 3x3) gains at 28x28 too, VGG's 512-channel layers
// 12.1 -> 7.9 ms with the kernels made beforehand). Smaller outputs can still take
// Winograd with the products transposed and the kernels packed once (winograd_conv3x3_transposed).
inline constexpr index_t winograd_min_channels = 16;
inline constexpr index_t winograd_min_tiles = 128;
// Transformed kernels up to this many values (4 MiB of float) are kept with the weights.
inline constexpr index_t winograd_kept_kernels_max = index_t(1) << 20;

// A 3x3 kernel with unit stride and dilation, and channels enough both ways.
inline bool winograd_kernel_fits(const ConvGeometry& g, index_t out_channels) {
    return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 &&
           g.dilation_h == 1 && g.dilation_w == 1 && g.channels >= winograd_min_channels &&
           out_channels >= winograd_min_channels;
}

// The m x m output tiles of Form that cover the output: along a row, down a column, in all.
template <class Form>
index_t winograd_tiles_w(const ConvGeometry& g) {
    return (g.out_w + Form::m - 1) / Form::m;
}
template <class Form>
index_t winograd_tiles_h(const ConvGeometry& g) {
    return (g.out_h + Form::m - 1) / Form::m;
}
template <class Form = WinogradF2>
index_t winograd_tiles(const ConvGeometry& g) {
    return winograd_tiles_h<Form>(g) * winograd_tiles_w<Form>(g);
}

inline bool winograd_applies(const ConvGeometry& g, index_t out_channels) {
    return winograd_kernel_fits(g, out_channels) && winograd_tiles(g) >= winograd_min_tiles;
}

// The geometry of the convolution that maps output gradients back to the input: dy's planes,
// padded by 2 - p, convolved to the input's size (with the kernels winograd_kernels makes with
// `adjoint`). Winograd serves it when p <= 2; beyond, the padding would be negative.
inline bool winograd_adjoint_applies(const ConvGeometry& g) { return g.pad_h <= 2 && g.pad_w <= 2; }

inline ConvGeometry winograd_adjoint(const ConvGeometry& g, index_t out_channels) {
    ConvGeometry adjoint = g;
    adjoint.channels = out_channels;
    adjoint.height = g.out_h;
    adjoint.width = g.out_w;
    adjoint.pad_h = 2 - g.pad_h;
    adjoint.pad_w = 2 - g.pad_w;
    adjoint.out_h = g.height;
    adjoint.out_w = g.width;
    return adjoint;
}

// The transformed kernels U[e][k][c] of weights w[k][c][3][3] (K x C), or with `adjoint`, those
// of the convolution that maps output gradients back to the input: U[e][c][k] from the kernel
// w[k][c] rotated by 180 degrees. A row r of U_e (k, or c with `adjoint`) at a time: its 3x3
// kernels' taps are gathered into nine rows first, so that both passes of the transform run
// along whole rows and vectorise.
template <class Form, class T>
void winograd_kernels(const T* w, index_t out_channels, index_t channels, bool adjoint, T* u) {
    constexpr index_t t = Form::t;
    const index_t count = out_channels * channels;
    const index_t rows = adjoint ? channels : out_channels,
                  cols = adjoint ? out_channels : channels;
    parallel_for(rows, count >= 4096, [&](index_t r, int) {
        std::vector<T> buffer((9 + 3 * t) * cols);
        T* taps = buffer.data();           // taps[i * 3 + j][q]: g[i][j] of U's column q
        T* gg = buffer.data() + 9 * cols;  // G g, by rows i * 3 + j
        for (index_t q = 0; q < cols; ++q) {
            const index_t k = adjoint ? q : r, c = adjoint ? r : q;
            const T* src = w + (k * channels + c) * 9;
            for (int tap = 0; tap < 9; ++tap) taps[tap * cols + q] = src[adjoint ? 8 - tap : tap];
        }
        for (int j = 0; j < 3; ++j)
            for (index_t q = 0; q < cols; ++q)
                Form::template kernel<T>(
                    [&](index_t i) { return taps[(i * 3 + j) * cols + q]; },
                    [&](index_t i, T value) { gg[(i * 3 + j) * cols + q] = value; });
        T* out = u + r * cols;
        for (index_t i = 0; i < t; ++i)  // (G g) G^T
            for (index_t q = 0; q < cols; ++q)
                Form::template kernel<T>(
                    [&](index_t j) { return gg[(i * 3 + j) * cols + q]; },
                    [&](index_t j, T value) { out[(i * t + j) * count + q] = value; });
    });
}

// Tile rows per block of the convolution: about 2^20 values of V and M (they stay in cache
// between the transforms and the products), but at least 256 tiles (or the whole image), over
// which the products share each packing of the kernels. Wide layers take more for that: 256 in
// and out channels at 56x56 hold 36 * 512 * 196 values (14 MB of float) with F(4x4, 3x3).
template <class Form>
index_t winograd_tile_rows(const ConvGeometry& g, index_t out_channels) {
    const index_t tiles_h = winograd_tiles_h<Form>(g), tiles_w = winograd_tiles_w<Form>(g);
    const index_t per_row = Form::positions * (g.channels + out_channels) * tiles_w;
    const index_t min_rows = (256 + tiles_w - 1) / tiles_w;
    return std::clamp<index_t>(std::max((index_t(1) << 20) / per_row, min_rows), 1, tiles_h);
}

template <class Form>
index_t winograd_scratch_size(const ConvGeometry& g, index_t out_channels) {
    return Form::positions * (g.channels + out_channels) *
           winograd_tile_rows<Form>(g, out_channels) * winograd_tiles_w<Form>(g);
}

// The input transform a channel at a time, for long rows of tiles. Each thread takes a range of
// channels: the channel's rows under the tiles are copied into a zero-padded plane (its zeros
// written once per thread, they lie in the same places for every channel); then B^T combines
// each tile row's t rows along whole rows; then B combines the columns of each tile, m apart,
// one output position at a time over all the channel's tiles, so that V's rows are written in
// one run each rather than a tile row's few values at a time. (Against a tile row at a time, each
// padded row built for it, on 2 threads: 64 channels of 56x56 in F(4x4, 3x3) 183 -> 85 us, 64 of
// 224x224 in F(2x2, 3x3) 4.4 -> 1.8 ms; GCC had left both passes scalar.)
template <class Form, class T>
void winograd_input_transform_by_channel(const T* x, const ConvGeometry& g, index_t ty0,
                                         index_t ty1, T* v, bool parallel) {
    constexpr index_t m = Form::m, t = Form::t;
    const index_t C = g.channels, tiles_w = winograd_tiles_w<Form>(g),
                  tiles = (ty1 - ty0) * tiles_w;
    const index_t tile_rows = ty1 - ty0, padded_rows = m * tile_rows + (t - m);
    const index_t span = m * tiles_w + (t - m);  // input columns -pad_w .. under a tile row
    const index_t e_stride = C * tiles;
    // Padded row r holds input row m * ty0 - pad_h + r, its columns at [pad_w, width + pad_w)
    // (they fit: span >= out_w + 2 = width + 2 pad_w).
    const index_t first_row = std::max<index_t>(0, g.pad_h - m * ty0);
    const index_t last_row = std::min(padded_rows, g.height + g.pad_h - m * ty0);
    const int threads = parallel_threads(C, parallel);
    parallel_for(threads, threads > 1, [&](index_t part, int) {
        T* padded = thread_scratch<T, 4>((padded_rows + tile_rows * t) * span);
        T* d = padded + padded_rows * span;  // d[tile row][a][column] = B^T d
        std::fill_n(padded, padded_rows * span, T(0));
        for (index_t c = C * part / threads; c < C * (part + 1) / threads; ++c) {
            const T* plane = x + c * g.height * g.width + (m * ty0 - g.pad_h) * g.width;
            for (index_t r = first_row; r < last_row; ++r)
                std::copy_n(plane + r * g.width, g.width, padded + r * span + g.pad_w);
            for (index_t ty = 0; ty < tile_rows; ++ty) {
                const T* in = padded + m * ty * span;
                T* out = d + ty * t * span;
                GRADCAM_INDEPENDENT_ITERATIONS
                for (index_t j = 0; j < span; ++j)
                    Form::template input<T>([=](index_t a) { return in[a * span + j]; },
                                            [=](index_t a, T value) { out[a * span + j] = value; });
            }
            for (index_t a = 0; a < t; ++a) {
                T* va = v + a * t * e_stride + c * tiles;
                for (index_t ty = 0; ty < tile_rows; ++ty) {
                    const T* row = d + (ty * t + a) * span;
                    T* out = va + ty * tiles_w;
                    GRADCAM_INDEPENDENT_ITERATIONS
                    for (index_t tx = 0; tx < tiles_w; ++tx)
                        Form::template input<T>(
                            [=](index_t b) { return row[m * tx + b]; },
                            [=](index_t b, T value) { out[b * e_stride + tx] = value; });
                }
            }
        }
    });
}

// The input transform sixteen channels at a time, side by side, for short rows of tiles. Their
// rows under a few tile rows are transposed into a zero-padded slab[row][column][lane], where
// each value of a tile is a vector of 16 lanes, so that both passes run on whole vectors: B^T
// combines the slab's rows m apart along a row of tiles' whole length, then B each tile's t
// columns. The results, O[e][tile][lane], are transposed back into V's rows. (A channel at a
// time, the second pass runs along a row of tiles, reading every m-th value: on rows of 4 to 14
// tiles it stays scalar.)
template <class Form, class T>
void winograd_input_transform_by_lanes(const T* x, const ConvGeometry& g, index_t ty0, index_t ty1,
                                       T* v, bool parallel) {
    constexpr index_t m = Form::m, t = Form::t, lanes = 16;
    const index_t C = g.channels, plane = g.height * g.width;
    const index_t tiles_w = winograd_tiles_w<Form>(g), tiles = (ty1 - ty0) * tiles_w;
    const index_t span = m * tiles_w + (t - m);  // input columns -pad_w .. under a tile row
    const index_t e_stride = C * tiles;
    // Each piece of work: a group of channels under a few tile rows, about 64 tiles.
    const index_t chunk_rows = std::clamp<index_t>(64 / tiles_w, 1, ty1 - ty0);
    const index_t chunks = (ty1 - ty0 + chunk_rows - 1) / chunk_rows;
    const index_t groups = (C + lanes - 1) / lanes;
    const index_t slab_rows = m * chunk_rows + (t - m), chunk_tiles = chunk_rows * tiles_w;
    parallel_for(groups * chunks, parallel, [&](index_t piece, int) {
        const index_t c0 = piece / chunks * lanes, used = std::min(lanes, C - c0);
        const index_t first_ty = ty0 + piece % chunks * chunk_rows;
        const index_t last_ty = std::min(ty1, first_ty + chunk_rows);
        // Slab row k holds input row top + k; the rows of the input among them are [first, last).
        const index_t top = m * first_ty - g.pad_h, rows = m * (last_ty - first_ty) + (t - m);
        const index_t first = std::clamp<index_t>(top, 0, g.height);
        const index_t last = std::clamp<index_t>(top + rows, first, g.height);
        T* dense = thread_scratch<T, 4>(
            (slab_rows * (g.width + span) + t * span + Form::positions * chunk_tiles) * lanes);
        T* slab = dense + slab_rows * g.width * lanes;
        T* d = slab + slab_rows * span * lanes;  // B^T d of a row of tiles: d[a][column][lane]
        T* o = d + t * span * lanes;             // O[e][tile][lane]

        // The lanes of a last, partial group are zeros, not whatever the buffer held.
        if (used < lanes) std::fill_n(dense, (last - first) * g.width * lanes, T(0));
        transpose_block(x + c0 * plane + first * g.width, plane, used, (last - first) * g.width,
                        dense, lanes, false);
        for (index_t k = 0; k < rows; ++k) {
            T* row = slab + k * span * lanes;
            if (top + k < first || top + k >= last) {
                std::fill_n(row, span * lanes, T(0));
                continue;
            }
            std::fill_n(row, g.pad_w * lanes, T(0));
            std::copy_n(dense + (top + k - first) * g.width * lanes, g.width * lanes,
                        row + g.pad_w * lanes);
            std::fill(row + (g.pad_w + g.width) * lanes, row + span * lanes, T(0));
        }

        const index_t row_values = span * lanes;
        for (index_t ty = first_ty; ty < last_ty; ++ty) {
            const T* in = slab + m * (ty - first_ty) * row_values;
            GRADCAM_INDEPENDENT_ITERATIONS
            for (index_t q = 0; q < row_values; ++q)
                Form::template input<T>([=](index_t i) { return in[i * row_values + q]; },
                                        [=](index_t a, T value) { d[a * row_values + q] = value; });
            for (index_t tx = 0; tx < tiles_w; ++tx)
                for (index_t a = 0; a < t; ++a) {
                    const T* columns = d + a * row_values + m * tx * lanes;
                    T* out = o + (a * t * chunk_tiles + (ty - first_ty) * tiles_w + tx) * lanes;
                    GRADCAM_INDEPENDENT_ITERATIONS
                    for (index_t l = 0; l < lanes; ++l)
                        Form::template input<T>(
                            [=](index_t j) { return columns[j * lanes + l]; },
                            [=](index_t b, T value) { out[b * chunk_tiles * lanes + l] = value; });
                }
        }
        const index_t done = (last_ty - first_ty) * tiles_w;
        T* to = v + c0 * tiles + (first_ty - ty0) * tiles_w;
        for (index_t e = 0; e < Form::positions; ++e)
            transpose_block(o + e * chunk_tiles * lanes, lanes, done, used, to + e * e_stride,
                            tiles, false);
    });
}

// V[e][c][tile] = B^T d B for the tiles of tile rows [ty0, ty1) of the g.channels planes x, zero
// outside the input. Rows of up to 16 tiles (maps up to 32 wide in F(2x2, 3x3), 64 in F(4x4,
// 3x3)) go sixteen channels at a time, longer ones a channel at a time. Measured on 2 threads,
// against a channel at a time: ResNet-50's 14x14 layers 82 -> 23 us, 7x7 67 -> 14, 28x28 68 ->
// 33, 56x56 83 -> 69; rows of 28 tiles even; 56 (224x224 in F(4x4, 3x3)) 84 -> 136.
template <class Form, class T>
void winograd_input_transform(const T* x, const ConvGeometry& g, index_t ty0, index_t ty1, T* v,
                              bool parallel) {
    if (winograd_tiles_w<Form>(g) <= 16)
        winograd_input_transform_by_lanes<Form>(x, g, ty0, ty1, v, parallel);
    else
        winograd_input_transform_by_channel<Form>(x, g, ty0, ty1, v, parallel);
}

// Y = A^T M A for the tile rows [ty0, ty1), from M[e][k][tile] (the tiles of those rows), cut
// to the output's edge: into y (or added to it, with `accumulate`), `tail` applied to each
// output row as it is written. A row of tiles at a time, as the input transform goes.
template <class Form, class T>
void winograd_output_transform(const T* products, index_t K, const ConvGeometry& g, index_t ty0,
                               index_t ty1, T* y, bool accumulate, const ConvTail<T>* tail,
                               bool parallel) {
    constexpr index_t m = Form::m, t = Form::t;
    const index_t tiles_w = winograd_tiles_w<Form>(g), tiles = (ty1 - ty0) * tiles_w;
    parallel_for(K, parallel, [&](index_t k, int) {
        std::vector<T> buffer((m * t + m) * tiles_w);
        T* s = buffer.data();                      // A^T M: m rows of t values per tile
        T* row = buffer.data() + m * t * tiles_w;  // one output row
        T* plane = y + k * g.out_h * g.out_w;
        const index_t e_stride = K * tiles;
        for (index_t ty = ty0; ty < ty1; ++ty) {
            const T* mk = products + k * tiles + (ty - ty0) * tiles_w;
            for (index_t b = 0; b < t; ++b)
                for (index_t tx = 0; tx < tiles_w; ++tx)
                    Form::template output<T>(
                        [&](index_t a) { return mk[(a * t + b) * e_stride + tx]; },
                        [&](index_t i, T value) { s[(i * t + b) * tiles_w + tx] = value; });
            for (index_t i = 0; i < m && m * ty + i < g.out_h; ++i) {
                const T* si = s + i * t * tiles_w;
                for (index_t tx = 0; tx < tiles_w; ++tx)
                    Form::template output<T>([&](index_t b) { return si[b * tiles_w + tx]; },
                                             [&](index_t j, T value) { row[m * tx + j] = value; });
                T* out = plane + (m * ty + i) * g.out_w;
                if (accumulate)
                    for (index_t ow = 0; ow < g.out_w; ++ow) out[ow] += row[ow];
                else
                    std::copy_n(row, g.out_w, out);
                if (tail) tail->apply(out, k, out - y, g.out_w);
            }
        }
    });
}

// y[k] (out_channels planes of g.out_h x g.out_w) = (or +=, with `accumulate`) the 3x3
// convolution of the g.channels planes x with the kernels whose transforms winograd_kernels
// made, with a convolution's `tail` applied to each output row as it is written. `scratch` holds
// winograd_scratch_size(...) values. The transforms' small buffers are not in thread_scratch's
// first slot: the calling thread, which is also the first of the team, already holds
// `scratch` there (the output transform's are vectors of their own, the input transform's
// buffers take slot 4).
template <class Form, class T>
void winograd_conv3x3(const T* x, const ConvGeometry& g, const T* u, index_t out_channels, T* y,
                      bool accumulate, T* scratch, const ConvTail<T>* tail = nullptr) {
    constexpr index_t positions = Form::positions;
    const index_t C = g.channels, K = out_channels;
    const index_t tiles_h = winograd_tiles_h<Form>(g), tiles_w = winograd_tiles_w<Form>(g);
    const index_t rows_per_block = winograd_tile_rows<Form>(g, K);
    for (index_t ty0 = 0; ty0 < tiles_h; ty0 += rows_per_block) {
        const index_t ty1 = std::min(tiles_h, ty0 + rows_per_block), tiles = (ty1 - ty0) * tiles_w;
        T* v = scratch;                                 // V[e][c][tile]
        T* products = scratch + positions * C * tiles;  // M[e][k][tile]
        const bool parallel = C * tiles >= parallel_grain / 16;

        winograd_input_transform<Form>(x, g, ty0, ty1, v, parallel);

        // M_e = U_e V_e: the products on separate threads, or one after another, each threaded.
        parallel_for(positions, parallel, [&](index_t e, int) {
            gemm(view(u + e * K * C, K, C), view(v + e * C * tiles, C, tiles),
                 products + e * K * tiles, tiles, false, !parallel);
        });

        winograd_output_transform<Form>(products, K, g, ty0, ty1, y, accumulate, tail, parallel);
    }
}

#if defined(GRADCAM_DETAIL_OWN_GEMM)
// The same convolution for outputs of up to 256 tiles (64x64 maps in F(4x4, 3x3), 32x32 in
// F(2x2, 3x3)), where U_e V_e would be as narrow as 49 or 16 columns. The products run
// transposed, as conv_pixel_major's do, tiles down and output channels across: M_e^T (tiles x K)
// = V_e^T U_e^T, with each U_e^T packed once (`u_t`, for Kernel). The output transform then runs
// along the channels of a tile, into Y^T, which is transposed back (applying `tail`). The whole
// image at once; the products on separate threads.
template <class Form, class Kernel, class T>
void winograd_conv3x3_transposed(const T* x, const ConvGeometry& g,
                                 const std::vector<typename Kernel::PackedRight>& u_t,
                                 index_t out_channels, T* y, bool accumulate,
                                 const ConvTail<T>* tail = nullptr) {
    constexpr index_t m = Form::m, t = Form::t, positions = Form::positions;
    const index_t C = g.channels, K = out_channels;
    const index_t tiles_w = winograd_tiles_w<Form>(g), tiles = winograd_tiles<Form>(g);
    const index_t ld = padded_stride<T>(K);                  // of M^T's and Y^T's rows
    T* v = thread_scratch<T>(positions * (C + ld) * tiles);  // V[e][c][tile]
    T* products = v + positions * C * tiles;                 // M^T[e][tile][k]
    T* y_t = thread_scratch<T, 3>(g.out_h * g.out_w * ld);   // Y^T[pixel][k]
    winograd_input_transform<Form>(x, g, 0, winograd_tiles_h<Form>(g), v, true);

    const MatrixView<T> u_shape{nullptr, C, K, 1, C};
    parallel_for(positions, true, [&](index_t e, int) {
        gemm_parts<Kernel>(view(v + e * C * tiles, C, tiles).transposed(), u_shape,
                           &u_t[static_cast<std::size_t>(e)], products + e * tiles * ld, ld, false,
                           false);
    });

    // Y = A^T M A, cut to the output's edge; per tile, along K, a block of channels at a time.
    const index_t e_stride = tiles * ld;
    parallel_for(tiles, true, [&](index_t tile, int) {
        constexpr index_t block = 32;
        T s[m * t][block];  // A^T M
        T out[m * m][block];
        const index_t ty = tile / tiles_w, tx = tile % tiles_w;
        const index_t rows = std::min(m, g.out_h - m * ty), cols = std::min(m, g.out_w - m * tx);
        const T* mt = products + tile * ld;
        for (index_t k0 = 0; k0 < K; k0 += block) {
            const index_t n = std::min(block, K - k0);
            for (index_t b = 0; b < t; ++b)
                for (index_t k = 0; k < n; ++k)
                    Form::template output<T>(
                        [&](index_t a) { return mt[(a * t + b) * e_stride + k0 + k]; },
                        [&](index_t i, T value) { s[i * t + b][k] = value; });
            for (index_t i = 0; i < rows; ++i)
                for (index_t k = 0; k < n; ++k)
                    Form::template output<T>(
                        [&](index_t b) { return s[i * t + b][k]; },
                        [&](index_t j, T value) { out[i * m + j][k] = value; });
            for (index_t i = 0; i < rows; ++i)
                for (index_t j = 0; j < cols; ++j)
                    std::copy_n(out[i * m + j], n,
                                y_t + ((m * ty + i) * g.out_w + m * tx + j) * ld + k0);
        }
    });
    transpose_into(y_t, g.out_h * g.out_w, K, ld, y, accumulate, tail);
}

// F(2x2, 3x3)'s kernels for the input gradient are the forward's, rearranged. The input
// gradient convolves with each kernel g turned by 180 degrees, which reverses the three values
// G is applied to; G's first and last rows are each other's reverse and its middle two read the
// same reversed, so G g' = P G g with P exchanging entries 0 and 3, and the transformed kernels
//     U'_e[c][k] = U_{flip(e)}[k][c],
// flip(e) exchanging row and column indices 0 and 3 of the 4x4 position e. (F(2x2, 3x3)'s
// points 0, 1, -1 and infinity, each replaced by its reciprocal, are the same set; F(4x4,
// 3x3)'s 2 and -2 would become 1/2 and -1/2, which it does not use.)
inline index_t winograd_f2_flipped(index_t e) {
    const auto flip = [](index_t i) { return i == 0 ? 3 : i == 3 ? 0 : i; };
    return flip(e / 4) * 4 + flip(e % 4);
}

// The input gradient's convolution (geometry g from winograd_adjoint, out_channels the forward's
// input channels) in F(2x2, 3x3) by the forward's kernels as winograd_conv3x3_transposed packed
// them for Kernel (`forward_u_t`, each U_e^T), so that a Guided Grad-CAM reads one set of them
// for both passes: M'_e = U'_e V'_e = U_{flip(e)}^T V'_e, the forward's packed U_{flip(e)}^T
// multiplied from the left (Kernel::multiply_packed_on_left, for up to four vectors of tiles).
// The products on separate threads, then the output transform by channels.
template <class Kernel, class T>
void winograd_f2_adjoint_by_forward_kernels(
    const T* dy, const ConvGeometry& g,
    const std::vector<typename Kernel::PackedRight>& forward_u_t, index_t out_channels, T* dx,
    bool accumulate) {
    using Form = WinogradF2;
    constexpr index_t positions = Form::positions;
    const index_t K = g.channels, C = out_channels, tiles = winograd_tiles<Form>(g);
    // Loads of V's last row run on past its end: zeros there.
    const index_t v_size = positions * K * tiles, slack = Kernel::lanes;
    T* v = thread_scratch<T>(v_size + slack + positions * C * tiles);  // V'[e][k][tile]
    T* products = v + v_size + slack;                                  // M'[e][c][tile]
    std::fill_n(v + v_size, slack, T(0));
    winograd_input_transform<Form>(dy, g, 0, winograd_tiles_h<Form>(g), v, true);
    parallel_for(positions, true, [&](index_t e, int) {
        Kernel::multiply_packed_on_left(
            forward_u_t[static_cast<std::size_t>(winograd_f2_flipped(e))], v + e * K * tiles, tiles,
            tiles, products + e * C * tiles, tiles);
    });
    winograd_output_transform<Form>(products, C, g, 0, winograd_tiles_h<Form>(g), dx, accumulate,
                                    static_cast<const ConvTail<T>*>(nullptr), true);
}
#endif

}  // namespace gradcam::detail
