// Lowering a convolution to a matrix product: im2col gathers, for every output position, the
// input values under the kernel into one column; col2im scatters such columns back (adding),
// which is the adjoint of im2col and so gives the input gradient.
#pragma once

#include <algorithm>

#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/transpose.hpp"
#include "gradcam/detail/vectorize.hpp"
#include "gradcam/shape.hpp"

namespace gradcam::detail {

struct ConvGeometry {
    index_t channels = 0, height = 0, width = 0;  // of one group's input planes
    index_t kernel_h = 0, kernel_w = 0;
    index_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
    index_t out_h = 0, out_w = 0;

    index_t rows() const { return channels * kernel_h * kernel_w; }
    index_t cols() const { return out_h * out_w; }
    // A 1x1 kernel with unit stride and no padding reads the input planes as they are.
    bool is_pointwise() const {
        return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 &&
               pad_w == 0;
    }
    // A 1x1 kernel without padding at a larger stride (ResNet's downsampling shortcuts): each
    // input value is read by one output at most.
    bool is_strided_pointwise() const {
        return kernel_h == 1 && kernel_w == 1 && pad_h == 0 && pad_w == 0 && !is_pointwise();
    }
    // Wide kernels at a horizontal stride of 2 go through the input rows' even and odd columns
    // (im2col_row_pairs, col2im_row_pairs); with 3 columns splitting costs more than it saves.
    bool by_row_pairs() const { return stride_w == 2 && dilation_w == 1 && kernel_w >= 5; }
};

// The output columns ow whose input column ow * stride + offset lies inside [0, width):
// [first, last), so the inner loops need no bounds checks.
inline void valid_columns(index_t offset, index_t stride, index_t width, index_t out_w,
                          index_t& first, index_t& last) {
    first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    last = width - offset <= 0 ? 0 : std::min(out_w, (width - offset + stride - 1) / stride);
    first = std::min(first, last);
}

// even[q] = line[2q] and odd[q] = line[2q + 1] for the `width` values of line (even takes the
// last one when width is odd): a row read at a stride of 2 becomes two rows read in runs. In
// one loop marked independent, so that it vectorises.
template <class T>
void split_even_odd(const T* line, index_t width, T* even, T* odd) {
    GRADCAM_INDEPENDENT_ITERATIONS
    for (index_t q = 0; q < width / 2; ++q) {
        even[q] = line[2 * q];
        odd[q] = line[2 * q + 1];
    }
    if (width % 2) even[width / 2] = line[width - 1];
}

// Output rows per tile, so that a tile's im2col buffer holds about 2^21 values (8 MB of float)
// whatever the image size: the lowering's memory stays small and cache-friendly.
inline index_t tile_rows(const ConvGeometry& g) {
    const index_t per_row = std::max<index_t>(g.rows() * g.out_w, 1);
    return std::clamp<index_t>((index_t(1) << 21) / per_row, 1, std::max<index_t>(g.out_h, 1));
}

// im2col's rows for kernel row i of one input plane x, with a horizontal stride of 2 (and no
// dilation): the kernel columns j then read every other value of an input row, from an even
// or an odd column on. For each output row, the input row under it is split into its even and
// odd columns (of the row zero-padded), so that every kernel column copies a run of one of
// them, rather than gathering every other value for each j. For wide kernels: ResNet's 7x7
// stem 0.175 -> 0.110 ms (the whole im2col, 2 threads); with 3 columns the split costs more than
// it saves (3x3 with 128 channels at 56x56: 0.128 -> 0.141 ms).
template <class T>
void im2col_row_pairs(const T* x, const ConvGeometry& g, index_t i, T* rows, index_t tile_cols,
                      index_t oh0, index_t oh1) {
    const index_t half = (g.width + 2 * g.pad_w + 1) / 2;  // each phase of the padded row
    T* even = thread_scratch<T, 5>(2 * half);
    T* odd = even + half;
    std::fill_n(even, 2 * half, T(0));  // the padding's zeros stay; the row's values are rewritten
    // Input column iw is padded column iw + pad_w: the input's even columns are the padded
    // row's even ones when pad_w is even, its odd ones when pad_w is odd.
    T* input_even = g.pad_w % 2 ? odd + g.pad_w / 2 : even + g.pad_w / 2;
    T* input_odd = g.pad_w % 2 ? even + (g.pad_w + 1) / 2 : odd + g.pad_w / 2;
    for (index_t oh = oh0; oh < oh1; ++oh) {
        const index_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        T* out = rows + (oh - oh0) * g.out_w;
        if (ih < 0 || ih >= g.height) {
            for (index_t j = 0; j < g.kernel_w; ++j)
                std::fill_n(out + j * tile_cols, g.out_w, T(0));
            continue;
        }
        split_even_odd(x + ih * g.width, g.width, input_even, input_odd);
        // Output column ow, kernel column j reads padded column 2 ow + j.
        for (index_t j = 0; j < g.kernel_w; ++j)
            std::copy_n((j % 2 ? odd : even) + j / 2, g.out_w, out + j * tile_cols);
    }
}

// For the output rows [oh0, oh1):
// col[(c*kh + i)*kw + j][(oh - oh0)*out_w + ow] = x[c][oh*sh - ph + i*dh][ow*sw - pw + j*dw], or
// 0 in the padding. `x` holds g.channels planes; `col` has g.rows() x (oh1 - oh0) * out_w values.
// The kernel rows (c, i) fill separate rows of `col`, on separate threads when the tile is large
// (inside a single image's convolution; images of a batch already run on separate threads).
template <class T>
void im2col(const T* x, const ConvGeometry& g, T* col, index_t oh0, index_t oh1) {
    const index_t plane = g.height * g.width, tile_cols = (oh1 - oh0) * g.out_w;
    const bool parallel = g.rows() * tile_cols >= parallel_grain;
    parallel_for(g.channels * g.kernel_h, parallel, [&](index_t ci, int) {
        const index_t c = ci / g.kernel_h, i = ci % g.kernel_h;
        if (g.by_row_pairs()) {
            im2col_row_pairs(x + c * plane, g, i, col + ci * g.kernel_w * tile_cols, tile_cols, oh0,
                             oh1);
            return;
        }
        for (index_t j = 0; j < g.kernel_w; ++j) {
            T* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * tile_cols;
            const index_t offset = j * g.dilation_w - g.pad_w;
            index_t first, last;
            valid_columns(offset, g.stride_w, g.width, g.out_w, first, last);
            for (index_t oh = oh0; oh < oh1; ++oh) {
                T* out = row + (oh - oh0) * g.out_w;
                const index_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
                if (ih < 0 || ih >= g.height) {
                    std::fill_n(out, g.out_w, T(0));
                    continue;
                }
                const T* line = x + c * plane + ih * g.width;
                std::fill_n(out, first, T(0));
                if (g.stride_w == 1)
                    std::copy(line + offset + first, line + offset + last, out + first);
                else if (g.stride_w == 2)  // a constant stride: the compiler vectorises it
                    for (index_t ow = first; ow < last; ++ow) out[ow] = line[offset + 2 * ow];
                else
                    for (index_t ow = first; ow < last; ++ow)
                        out[ow] = line[offset + ow * g.stride_w];
                std::fill(out + last, out + g.out_w, T(0));
            }
        }
    });
}

// The adjoint of im2col_row_pairs, for input row ih of plane c (`line`): the col entries of the
// output rows [oh0, oh1) that read from the row are summed into the even and odd columns of the
// row zero-padded, each kernel column's run into one of them, and these added into the row,
// rather than adding into every other value for each j. ResNet's stem: 0.39 -> 0.13 ms (the
// whole col2im, 2 threads); by 16 bands of 7 output rows on one thread 0.88 -> 0.21 ms.
template <class T>
void col2im_row_pairs(const T* col, const ConvGeometry& g, index_t c, index_t ih, index_t tile_cols,
                      index_t oh0, index_t oh1, T* line) {
    const index_t half = (g.width + 2 * g.pad_w + 1) / 2;  // each phase of the padded row
    T* even = thread_scratch<T, 5>(2 * half);
    T* odd = even + half;
    std::fill_n(even, 2 * half, T(0));
    bool reached = false;
    for (index_t i = 0; i < g.kernel_h; ++i) {
        const index_t from_top = ih + g.pad_h - i * g.dilation_h;  // oh * stride_h, if any
        if (from_top < 0 || from_top % g.stride_h) continue;
        const index_t oh = from_top / g.stride_h;
        if (oh < oh0 || oh >= oh1) continue;
        reached = true;
        const T* in = col + (c * g.kernel_h + i) * g.kernel_w * tile_cols + (oh - oh0) * g.out_w;
        // Output column ow, kernel column j read padded column 2 ow + j.
        for (index_t j = 0; j < g.kernel_w; ++j) {
            T* to = (j % 2 ? odd : even) + j / 2;
            const T* from = in + j * tile_cols;
            GRADCAM_INDEPENDENT_ITERATIONS
            for (index_t ow = 0; ow < g.out_w; ++ow) to[ow] += from[ow];
        }
    }
    if (!reached) return;
    // Input column iw is padded column iw + pad_w (see im2col_row_pairs).
    const T* input_even = g.pad_w % 2 ? odd + g.pad_w / 2 : even + g.pad_w / 2;
    const T* input_odd = g.pad_w % 2 ? even + (g.pad_w + 1) / 2 : odd + g.pad_w / 2;
    GRADCAM_INDEPENDENT_ITERATIONS
    for (index_t q = 0; q < g.width / 2; ++q) {
        line[2 * q] += input_even[q];
        line[2 * q + 1] += input_odd[q];
    }
    if (g.width % 2) line[g.width - 1] += input_even[g.width / 2];
}

// The adjoint of im2col for the output rows [oh0, oh1): x[c][ih][iw] += every col entry that
// im2col read from there. Channels on separate threads (each adds into its own plane only);
// with few channels (an RGB image's gradient: 3 planes split 2 to 1) each plane is also split
// into bands of input rows. Wide kernels at stride 2 go by row pairs, as in im2col.
template <class T>
void col2im_add(const T* col, const ConvGeometry& g, T* x, index_t oh0, index_t oh1) {
    const index_t plane = g.height * g.width, tile_cols = (oh1 - oh0) * g.out_w;
    const bool parallel = g.rows() * tile_cols >= parallel_grain;
    const index_t bands = g.channels >= 8 ? 1 : std::min<index_t>(8, g.height);
    parallel_for(g.channels * bands, parallel, [&](index_t item, int) {
        const index_t c = item / bands, band = item % bands;
        const index_t h0 = g.height * band / bands, h1 = g.height * (band + 1) / bands;
        if (g.by_row_pairs()) {
            // The input rows that the output rows [oh0, oh1) read.
            const index_t top = std::max(h0, oh0 * g.stride_h - g.pad_h);
            const index_t bottom = std::min(
                h1, (oh1 - 1) * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dilation_h + 1);
            for (index_t ih = top; ih < bottom; ++ih)
                col2im_row_pairs(col, g, c, ih, tile_cols, oh0, oh1, x + c * plane + ih * g.width);
            return;
        }
        for (index_t i = 0; i < g.kernel_h; ++i)
            for (index_t j = 0; j < g.kernel_w; ++j) {
                const T* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * tile_cols;
                const index_t offset = j * g.dilation_w - g.pad_w;
                index_t first, last;
                valid_columns(offset, g.stride_w, g.width, g.out_w, first, last);
                for (index_t oh = oh0; oh < oh1; ++oh) {
                    const index_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
                    if (ih < h0 || ih >= h1) continue;
                    const T* in = row + (oh - oh0) * g.out_w;
                    T* line = x + c * plane + ih * g.width;
                    for (index_t ow = first; ow < last; ++ow)
                        line[offset + ow * g.stride_w] += in[ow];
                }
            }
    });
}

// The adjoint of im2col for a strided pointwise convolution: x[c][oh * s_h][ow * s_w] (= or +=)
// the value for channel c and output pixel p = oh * out_w + ow, at values[c * channel_step +
// p * pixel_step] (col, or col^T). Assigning writes the values in between as zeros in the same
// pass, where col2im_add would need x zeroed first: a whole pass over x, 4 times the values.
template <class T>
void col2im_pointwise(const T* values, index_t channel_step, index_t pixel_step,
                      const ConvGeometry& g, T* x, bool assign) {
    const index_t plane = g.height * g.width;
    parallel_for(g.channels, g.channels * plane >= parallel_grain, [&](index_t c, int) {
        for (index_t ih = 0; ih < g.height; ++ih) {
            T* line = x + c * plane + ih * g.width;
            if (assign) std::fill_n(line, g.width, T(0));
            const index_t oh = ih / g.stride_h;
            if (ih % g.stride_h || oh >= g.out_h) continue;
            const T* from = values + c * channel_step + oh * g.out_w * pixel_step;
            for (index_t ow = 0; ow < g.out_w; ++ow) line[ow * g.stride_w] += from[ow * pixel_step];
        }
    });
}

// The same for all output rows from col^T, whose row p (an output pixel) holds that pixel's
// g.rows() values, rows ld apart. Channels on separate threads. Within a row of outputs, a
// pixel's values for one channel share a cache line, so going across the pixels once per kernel
// tap reads each line from memory once.
template <class T>
void col2im_add_transposed(const T* col_t, index_t ld, const ConvGeometry& g, T* x) {
    const index_t plane = g.height * g.width, taps = g.kernel_h * g.kernel_w;
    parallel_for(g.channels, g.rows() * g.cols() >= parallel_grain, [&](index_t c, int) {
        for (index_t oh = 0; oh < g.out_h; ++oh)
            for (index_t i = 0; i < g.kernel_h; ++i) {
                const index_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
                if (ih < 0 || ih >= g.height) continue;
                T* line = x + c * plane + ih * g.width;
                const T* values = col_t + oh * g.out_w * ld + c * taps + i * g.kernel_w;
                for (index_t j = 0; j < g.kernel_w; ++j) {
                    const index_t offset = j * g.dilation_w - g.pad_w;
                    index_t first, last;
                    valid_columns(offset, g.stride_w, g.width, g.out_w, first, last);
                    for (index_t ow = first; ow < last; ++ow)
                        line[offset + ow * g.stride_w] += values[ow * ld + j];
                }
            }
    });
}

// The same at a horizontal stride of 2: blocks of 16 channels of col^T are transposed back to
// col (a row per channel and tap) in the thread's cache, 16x16 tiles at a time, and added by
// row pairs from there, where adding each value from col^T on its own goes a value at a time
// with every other value of the row. The col2im of ResNet-50's 128-channel 3x3 layer with
// stride 2 at 56x56: 0.47 -> 0.26 ms; of ResNet-18's 64 -> 128 one 0.26 -> 0.15 ms (2 threads).
template <class T>
void col2im_add_transposed_by_blocks(const T* col_t, index_t ld, const ConvGeometry& g, T* x) {
    const index_t taps = g.kernel_h * g.kernel_w, plane = g.height * g.width, block = 16;
    const index_t blocks = (g.channels + block - 1) / block;
    parallel_for(blocks, g.rows() * g.cols() >= parallel_grain, [&](index_t b, int) {
        const index_t c0 = b * block, count = std::min(block, g.channels - c0);
        T* col = thread_scratch<T, 6>(count * taps * g.cols());
        transpose_block(col_t + c0 * taps, ld, g.cols(), count * taps, col, g.cols(), false);
        for (index_t c = 0; c < count; ++c)
            for (index_t ih = 0; ih < g.height; ++ih)
                col2im_row_pairs(col, g, c, ih, g.cols(), 0, g.out_h,
                                 x + (c0 + c) * plane + ih * g.width);
    });
}

}  // namespace gradcam::detail
