// 3x3 convolution with unit stride by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
// "Fast Algorithms for Convolutional Neural Networks", CVPR 2016). Each 2x2 block of outputs
// comes from the 4x4 input tile d under it:
//     Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,
// 16 multiplications where the direct form needs 36. Summed over input channels, the
// elementwise product becomes 16 independent matrix products, one per tile position e:
//     M_e[k, tile] = sum_c U_e[k, c] V_e[c, tile],   U = G g G^T,  V = B^T d B,
// which detail::gemm computes; the transforms themselves are additions and halvings only, so
// the result differs from the direct sum by rounding alone.
#pragma once

#include <algorithm>
#include <vector>

#include "gradcam/detail/gemm.hpp"
#include "gradcam/detail/im2col.hpp"
#include "gradcam/detail/parallel.hpp"

namespace gradcam::detail {

// Below these channel counts the products are too thin for the transforms to pay off; below
// this many tiles, products U_e V_e as they stand are too narrow and the transformed kernels
// (16/9 the weights) are used too few times each to pay for making and packing them (measured
// on ResNet and VGG layers: 28x28 outputs gain, 14x14 lose). Smaller outputs can still take
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

// The 2x2 output tiles that cover the output.
inline index_t winograd_tiles(const ConvGeometry& g) {
    return ((g.out_h + 1) / 2) * ((g.out_w + 1) / 2);
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

// U = G g G^T for one 3x3 kernel g (row-major), written to u[0], u[stride], ... u[15 * stride].
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
template <class T>
void winograd_kernel(const T (&g)[3][3], T* u, index_t stride) {
    T gg[4][3];  // G g
    for (int j = 0; j < 3; ++j) {
        gg[0][j] = g[0][j];
        gg[1][j] = T(0.5) * (g[0][j] + g[1][j] + g[2][j]);
        gg[2][j] = T(0.5) * (g[0][j] - g[1][j] + g[2][j]);
        gg[3][j] = g[2][j];
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G^T
        u[(i * 4 + 0) * stride] = gg[i][0];
        u[(i * 4 + 1) * stride] = T(0.5) * (gg[i][0] + gg[i][1] + gg[i][2]);
        u[(i * 4 + 2) * stride] = T(0.5) * (gg[i][0] - gg[i][1] + gg[i][2]);
        u[(i * 4 + 3) * stride] = gg[i][2];
    }
}

// The transformed kernels U[e][k][c] of weights w[k][c][3][3] (K x C), or with `adjoint`, those
// of the convolution that maps output gradients back to the input: U[e][c][k] from the kernel
// w[k][c] rotated by 180 degrees.
template <class T>
void winograd_kernels(const T* w, index_t out_channels, index_t channels, bool adjoint, T* u) {
    const index_t count = out_channels * channels;
    parallel_for(out_channels, count >= 4096, [&](index_t k, int) {
        for (index_t c = 0; c < channels; ++c) {
            const T* src = w + (k * channels + c) * 9;
            T g[3][3];
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j)
                    g[i][j] = adjoint ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
            winograd_kernel(g, u + (adjoint ? c * out_channels + k : k * channels + c), count);
        }
    });
}

// Tile rows per block of the convolution: about 2^20 values of V and M (they stay in cache
// between the transforms and the products), but at least 256 tiles (or the whole image), over
// which the products share each packing of the kernels. Wide layers take more for that: 512 in
// and out channels at 28x28 hold 16 * 1024 * 196 values (13 MB of float).
inline index_t winograd_tile_rows(const ConvGeometry& g, index_t out_channels) {
    const index_t tiles_h = (g.out_h + 1) / 2, tiles_w = (g.out_w + 1) / 2;
    const index_t per_row = 16 * (g.channels + out_channels) * tiles_w;
    const index_t min_rows = (256 + tiles_w - 1) / tiles_w;
    return std::clamp<index_t>(std::max((index_t(1) << 20) / per_row, min_rows), 1, tiles_h);
}

inline index_t winograd_scratch_size(const ConvGeometry& g, index_t out_channels) {
    return 16 * (g.channels + out_channels) * winograd_tile_rows(g, out_channels) *
           ((g.out_w + 1) / 2);
}

// V[e][c][tile] = B^T d B for the tiles of tile rows [ty0, ty1) of the g.channels planes x,
// with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], zero outside the input. A row of tiles at
// a time, so the loops run along whole rows and vectorise: first B^T combines the tile row's
// four input rows, then B their columns, two apart per tile.
template <class T>
void winograd_input_transform(const T* x, const ConvGeometry& g, index_t ty0, index_t ty1, T* v,
                              bool parallel) {
    const index_t C = g.channels, tiles_w = (g.out_w + 1) / 2, tiles = (ty1 - ty0) * tiles_w;
    parallel_for(C, parallel, [&](index_t c, int) {
        const index_t span = 2 * tiles_w + 2;  // input columns -pad_w .. under the tile row
        std::vector<T> buffer(8 * span);
        T* d = buffer.data();             // the four input rows, zero-padded
        T* t = buffer.data() + 4 * span;  // B^T d
        const T* plane = x + c * g.height * g.width;
        // The input's columns go to [pad_w, width + pad_w) of a row buffer (they fit: span >=
        // out_w + 2 = width + 2 pad_w).
        for (index_t ty = ty0; ty < ty1; ++ty) {
            for (int a = 0; a < 4; ++a) {
                T* row = d + a * span;
                const index_t ih = 2 * ty - g.pad_h + a;
                std::fill_n(row, span, T(0));
                if (ih >= 0 && ih < g.height)
                    std::copy_n(plane + ih * g.width, g.width, row + g.pad_w);
            }
            for (index_t j = 0; j < span; ++j) {
                t[j] = d[j] - d[2 * span + j];
                t[span + j] = d[span + j] + d[2 * span + j];
                t[2 * span + j] = d[2 * span + j] - d[span + j];
                t[3 * span + j] = d[span + j] - d[3 * span + j];
            }
            T* out = v + c * tiles + (ty - ty0) * tiles_w;
            const index_t e_stride = C * tiles;
            for (int a = 0; a < 4; ++a) {
                const T* ta = t + a * span;
                T* v0 = out + (a * 4 + 0) * e_stride;
                T* v1 = out + (a * 4 + 1) * e_stride;
                T* v2 = out + (a * 4 + 2) * e_stride;
                T* v3 = out + (a * 4 + 3) * e_stride;
                for (index_t tx = 0; tx < tiles_w; ++tx) {
                    const T t0 = ta[2 * tx], t1 = ta[2 * tx + 1], t2 = ta[2 * tx + 2],
                            t3 = ta[2 * tx + 3];
                    v0[tx] = t0 - t2;
                    v1[tx] = t1 + t2;
                    v2[tx] = t2 - t1;
                    v3[tx] = t1 - t3;
                }
            }
        }
    });
}

// y[k] (out_channels planes of g.out_h x g.out_w) = (or +=, with `accumulate`) the 3x3
// convolution of the g.channels planes x with the kernels whose transforms winograd_kernels
// made. `scratch` holds winograd_scratch_size(...) values. The transforms' small row buffers
// are vectors of their own, not thread_scratch: the calling thread, which is also the first of
// the team, already holds its scratch buffer.

template <class T>
void winograd_conv3x3(const T* x, const ConvGeometry& g, const T* u, index_t out_channels, T* y,
                      bool accumulate, T* scratch) {
    const index_t C = g.channels, K = out_channels;
    const index_t tiles_h = (g.out_h + 1) / 2, tiles_w = (g.out_w + 1) / 2;
    const index_t rows_per_block = winograd_tile_rows(g, K);
    for (index_t ty0 = 0; ty0 < tiles_h; ty0 += rows_per_block) {
        const index_t ty1 = std::min(tiles_h, ty0 + rows_per_block), tiles = (ty1 - ty0) * tiles_w;
        T* v = scratch;                   // V[e][c][tile]
        T* m = scratch + 16 * C * tiles;  // M[e][k][tile]
        const bool parallel = C * tiles >= parallel_grain / 16;

        winograd_input_transform(x, g, ty0, ty1, v, parallel);

        // M_e = U_e V_e: 16 products on separate threads, or one after another, each threaded.
        parallel_for(16, parallel, [&](index_t e, int) {
            gemm(view(u + e * K * C, K, C), view(v + e * C * tiles, C, tiles), m + e * K * tiles,
                 tiles, false, !parallel);
        });

        // Y = A^T M A with A^T = [1 1 1 0; 0 1 -1 -1], cut to the output's edge; a row of
        // tiles at a time, as above.
        parallel_for(K, parallel, [&](index_t k, int) {
            std::vector<T> buffer(10 * tiles_w);
            T* s = buffer.data();                   // A^T M: two rows of 4 values per tile
            T* rows = buffer.data() + 8 * tiles_w;  // the two output rows
            T* plane = y + k * g.out_h * g.out_w;
            const index_t e_stride = K * tiles;
            for (index_t ty = ty0; ty < ty1; ++ty) {
                const T* mk = m + k * tiles + (ty - ty0) * tiles_w;
                for (int b = 0; b < 4; ++b) {
                    const T *m0 = mk + b * e_stride, *m1 = mk + (4 + b) * e_stride,
                            *m2 = mk + (8 + b) * e_stride, *m3 = mk + (12 + b) * e_stride;
                    T *s0 = s + b * tiles_w, *s1 = s + (4 + b) * tiles_w;
                    for (index_t tx = 0; tx < tiles_w; ++tx) {
                        s0[tx] = m0[tx] + m1[tx] + m2[tx];
                        s1[tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                for (int a = 0; a < 2 && 2 * ty + a < g.out_h; ++a) {
                    const T* sa = s + a * 4 * tiles_w;
                    T* row = rows;
                    for (index_t tx = 0; tx < tiles_w; ++tx) {
                        const T s0 = sa[tx], s1 = sa[tiles_w + tx], s2 = sa[2 * tiles_w + tx],
                                s3 = sa[3 * tiles_w + tx];
                        row[2 * tx] = s0 + s1 + s2;
                        row[2 * tx + 1] = s1 - s2 - s3;
                    }
                    T* out = plane + (2 * ty + a) * g.out_w;
                    if (accumulate)
                        for (index_t ow = 0; ow < g.out_w; ++ow) out[ow] += row[ow];
                    else
                        std::copy_n(row, g.out_w, out);
                }
            }
        });
    }
}

#if defined(GRADCAM_DETAIL_OWN_GEMM)
// The same convolution for small outputs (28x28 maps and below: 196 tiles or fewer), where
// U_e V_e would be as narrow as 49 or 16 columns. The products run transposed, as conv_pixel_major's do, tiles down and output
// channels across: M_e^T (tiles x K) = V_e^T U_e^T, with each U_e^T packed once (`u_t`, for
// Kernel). The output transform then runs along the channels of a tile, into Y^T, which is
// transposed back. The whole image at once; the 16 products on separate threads.
template <class Kernel, class T>
void winograd_conv3x3_transposed(const T* x, const ConvGeometry& g,
                                 const std::vector<typename Kernel::PackedRight>& u_t,
                                 index_t out_channels, T* y, bool accumulate) {
    const index_t C = g.channels, K = out_channels;
    const index_t tiles_h = (g.out_h + 1) / 2, tiles_w = (g.out_w + 1) / 2, tiles = tiles_h * tiles_w;
    const index_t ld = padded_stride<T>(K);  // of M^T's and Y^T's rows
    T* v = thread_scratch<T>(16 * C * tiles + 16 * tiles * ld);  // V[e][c][tile]
    T* m = v + 16 * C * tiles;                                   // M^T[e][tile][k]
    T* y_t = thread_scratch<T, 3>(g.out_h * g.out_w * ld);       // Y^T[pixel][k]
    winograd_input_transform(x, g, 0, tiles_h, v, true);

    const MatrixView<T> u_shape{nullptr, C, K, 1, C};
    parallel_for(16, true, [&](index_t e, int) {
        gemm_parts<Kernel>(view(v + e * C * tiles, C, tiles).transposed(), u_shape,
                           &u_t[static_cast<std::size_t>(e)], m + e * tiles * ld, ld, false, false);
    });

    // Y = A^T M A with A^T = [1 1 1 0; 0 1 -1 -1], cut to the output's edge; per tile, along K.
    const index_t e_stride = tiles * ld;
    parallel_for(tiles, true, [&](index_t tile, int) {
        const index_t ty = tile / tiles_w, tx = tile % tiles_w;
        const T* mt = m + tile * ld;
        for (int a = 0; a < 2 && 2 * ty + a < g.out_h; ++a) {
            T* left = y_t + ((2 * ty + a) * g.out_w + 2 * tx) * ld;
            T* right = left + ld;
            const bool has_right = 2 * tx + 1 < g.out_w;
            for (index_t k = 0; k < K; ++k) {
                T s[4];  // row a of A^T M
                for (int b = 0; b < 4; ++b) {
                    const T m0 = mt[b * e_stride + k], m1 = mt[(4 + b) * e_stride + k],
                            m2 = mt[(8 + b) * e_stride + k], m3 = mt[(12 + b) * e_stride + k];
                    s[b] = a == 0 ? m0 + m1 + m2 : m1 - m2 - m3;
                }
                left[k] = s[0] + s[1] + s[2];
                if (has_right) right[k] = s[1] - s[2] - s[3];
            }
        }
    });
    transpose_into(y_t, g.out_h * g.out_w, K, ld, y, accumulate);
}
#endif

}  // namespace gradcam::detail
