// Pooling over the two spatial axes of NCHW tensors, with PyTorch's output sizes, padding and
// tie rules: max_pool2d, avg_pool2d and adaptive_avg_pool2d (global pooling at output 1x1).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "gradcam/detail/im2col.hpp"  // valid_columns
#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/vectorize.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

struct Pool2dOptions {
    Size2 kernel = 2;
    Size2 stride = 0;  // 0: equal to the kernel, as in PyTorch
    Size2 padding = 0;
    Size2 dilation = 1;  // max pooling only
    bool ceil_mode = false;
    bool count_include_pad = true;  // average pooling only
};

namespace detail {

struct PoolGeometry {
    index_t height, width, out_h, out_w;
    index_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// PyTorch's pooling_output_shape: with ceil_mode the last window may hang over the edge, but
// must start inside the input or its left padding.
inline index_t pool_output_size(index_t in, index_t kernel, index_t pad, index_t stride,
                                index_t dilation, bool ceil_mode) {
    const index_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
    index_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) --out;
    return out;
}

inline PoolGeometry pool_geometry(const Shape& x, const Pool2dOptions& o, const char* op) {
    expect_rank(x, 4, op, "N, C, H, W");
    const Size2 stride = (o.stride.h == 0 && o.stride.w == 0) ? o.kernel : o.stride;
    if (o.kernel.h < 1 || o.kernel.w < 1 || stride.h < 1 || stride.w < 1 || o.dilation.h < 1 ||
        o.dilation.w < 1 || o.padding.h < 0 || o.padding.w < 0)
        throw argument_error(concat(op, ": kernel, stride and dilation must be positive and ",
                                    "padding non-negative"));
    if (2 * o.padding.h > o.kernel.h || 2 * o.padding.w > o.kernel.w)
        throw argument_error(concat(op, ": padding ", o.padding.h, "x", o.padding.w,
                                    " exceeds half the kernel ", o.kernel.h, "x", o.kernel.w));
    PoolGeometry g{x[2],     x[3],     0,           0,           o.kernel.h,   o.kernel.w,
                   stride.h, stride.w, o.padding.h, o.padding.w, o.dilation.h, o.dilation.w};
    g.out_h = pool_output_size(x[2], o.kernel.h, o.padding.h, stride.h, o.dilation.h, o.ceil_mode);
    g.out_w = pool_output_size(x[3], o.kernel.w, o.padding.w, stride.w, o.dilation.w, o.ceil_mode);
    if (g.out_h < 1 || g.out_w < 1)
        throw shape_error(concat(op, ": input ", x, " is too small for kernel ", o.kernel.h, "x",
                                 o.kernel.w, " with padding ", o.padding.h, "x", o.padding.w));
    return g;
}

// One plane of a max pool, in two passes that read contiguously and vectorise: the maximum over
// the kernel's columns, once per input row, then over its rows. Each input row is split into
// stride_w phases (phase r holding columns r, r + stride_w, ...) first. With `argmax`, each
// output's position in the plane as well (-1 where the window holds only padding), by the rule
// of a scan of the window in row-major order that takes the first value, then any larger one or
// NaN: applied to each row's winner in turn it picks the same position as over the whole window.
// ResNet's stem pooling, 64 planes 112x112 -> 56x56, 2 threads: 340 -> 200 us without argmax
// (against a scan of each window); with it 830 -> 360 us.
template <class T, bool Argmax>
void max_pool_plane(const T* in, const PoolGeometry& g, T* out, std::int32_t* argmax) {
    const index_t s = g.stride_w, span = (g.width + s - 1) / s;
    T* phases = thread_scratch<T, 4>(s * span + g.height * g.out_w);
    T* across = phases + s * span;  // across[ih][ow]: the maximum over the kernel's columns
    std::int32_t* across_at =       // and its column, -1 for none
        Argmax ? thread_scratch<std::int32_t, 5>(g.height * g.out_w) : nullptr;
    // wins(v, current, current_at): whether v at its position takes over from current.
    const auto wins = [](T v, T current, std::int32_t current_at) {
        return (!Argmax || current_at >= 0) ? v > current || std::isnan(v) : true;
    };
    for (index_t ih = 0; ih < g.height; ++ih) {
        const T* line = in + ih * g.width;
        const T* split = phases;  // the row's phases, stride_w of them, span apart
        if (s == 1) {
            split = line;     // one phase: the row as it is
        } else if (s == 2) {  // the usual stride, spelled out so that the split vectorises
            split_even_odd(line, g.width, phases, phases + span);
        } else {
            for (index_t r = 0; r < s; ++r) {
                T* phase = phases + r * span;
                const index_t count = (g.width - r + s - 1) / s;
                for (index_t q = 0; q < count; ++q) phase[q] = line[q * s + r];
            }
        }
        T* row = across + ih * g.out_w;
        std::int32_t* row_at = Argmax ? across_at + ih * g.out_w : nullptr;
        std::fill_n(row, g.out_w, -std::numeric_limits<T>::infinity());
        if constexpr (Argmax) std::fill_n(row_at, g.out_w, -1);
        for (index_t j = 0; j < g.kernel_w; ++j) {
            const index_t offset = j * g.dilation_w - g.pad_w;
            index_t first, last;
            valid_columns(offset, s, g.width, g.out_w, first, last);
            // Column ow * s + offset is phase r at index ow + (offset - r) / s.
            const index_t r = (offset % s + s) % s;
            const T* from = split + r * span + (offset - r) / s;
            if constexpr (Argmax) {
                const auto column = static_cast<std::int32_t>(offset);
                const auto step = static_cast<std::int32_t>(s);
                GRADCAM_INDEPENDENT_ITERATIONS
                for (index_t ow = first; ow < last; ++ow) {
                    const bool take = wins(from[ow], row[ow], row_at[ow]);
                    row[ow] = take ? from[ow] : row[ow];
                    row_at[ow] = take ? column + static_cast<std::int32_t>(ow) * step : row_at[ow];
                }
            } else {
                GRADCAM_INDEPENDENT_ITERATIONS
                for (index_t ow = first; ow < last; ++ow)
                    row[ow] = wins(from[ow], row[ow], 0) ? from[ow] : row[ow];
            }
        }
    }
    for (index_t oh = 0; oh < g.out_h; ++oh) {
        T* y = out + oh * g.out_w;
        std::int32_t* at = Argmax ? argmax + oh * g.out_w : nullptr;
        std::fill_n(y, g.out_w, -std::numeric_limits<T>::infinity());
        if constexpr (Argmax) std::fill_n(at, g.out_w, -1);
        for (index_t i = 0; i < g.kernel_h; ++i) {
            const index_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.height) continue;
            const T* row = across + ih * g.out_w;
            if constexpr (Argmax) {
                const std::int32_t* row_at = across_at + ih * g.out_w;
                const auto line = static_cast<std::int32_t>(ih * g.width);
                GRADCAM_INDEPENDENT_ITERATIONS
                for (index_t ow = 0; ow < g.out_w; ++ow) {
                    const bool take = row_at[ow] >= 0 && wins(row[ow], y[ow], at[ow]);
                    y[ow] = take ? row[ow] : y[ow];
                    at[ow] = take ? line + row_at[ow] : at[ow];
                }
            } else {
                GRADCAM_INDEPENDENT_ITERATIONS
                for (index_t ow = 0; ow < g.out_w; ++ow)
                    y[ow] = wins(row[ow], y[ow], 0) ? row[ow] : y[ow];
            }
        }
    }
}

// Marks a pooling whose backward keeps each channel's gradient total (max pooling sends each
// output's gradient to one input, an adaptive bin spreads it with weights summing to 1).
template <class T>
Var<T> routed_within_channels(Var<T> pooled) {
    pooled.tape().set_routing(pooled, GradientRouting::within_channels);
    return pooled;
}

}  // namespace detail

// forward:  y[n, c, oh, ow] = max over the window of x (padding never wins); ties go to the
//           first position in row-major order and NaN propagates, as in PyTorch.
//           A window that holds only padding (possible with dilation) gives -inf.
// backward: dx[argmax] += dy for each output; a padding-only window sends nothing.
template <class T>
Var<T> max_pool2d(const Var<T>& x, const Pool2dOptions& options = {}) {
    const detail::PoolGeometry g = detail::pool_geometry(x.shape(), options, "max_pool2d");
    const index_t planes = x.shape()[0] * x.shape()[1];
    const index_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    Tensor<T> y = Tensor<T>::uninitialized(Shape{x.shape()[0], x.shape()[1], g.out_h, g.out_w});
    const bool keep_argmax = x.tape().will_record({x});
    // Written in full by max_pool_plane. A Tensor, so that the buffer cache serves it: a
    // std::vector was zeroed on one thread and, at 0.8 MB for ResNet's stem, paged in fresh.
    Tensor<std::int32_t> argmax;
    if (keep_argmax) argmax = Tensor<std::int32_t>::uninitialized(y.shape());
    const T* xs = x.value().data();
    T* ys = y.data();
    detail::parallel_for(planes, y.size() >= detail::parallel_grain, [&](index_t p, int) {
        if (keep_argmax)
            detail::max_pool_plane<T, true>(xs + p * in_plane, g, ys + p * out_plane,
                                            argmax.data() + p * out_plane);
        else
            detail::max_pool_plane<T, false>(xs + p * in_plane, g, ys + p * out_plane, nullptr);
    });
    if (!keep_argmax) return x.tape().record("max_pool2d", std::move(y), {x}, nullptr);
    return detail::routed_within_channels(x.tape().record(
        "max_pool2d", std::move(y), {x},
        [argmax = std::move(argmax), in_plane, out_plane](const Node<T>&, const Tensor<T>& dy,
                                                          GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            bool fresh = false;
            T* dx = sink.of(0, fresh).data();
            // A plane per thread, zeroed there when fresh: it is in that thread's cache for the
            // sums that follow.
            const auto plane_gradient = [&](index_t p, int) {
                T* plane = dx + p * in_plane;
                if (fresh) std::fill_n(plane, in_plane, T(0));
                const std::int32_t* at = argmax.data() + p * out_plane;
                const T* g = dy.data() + p * out_plane;
                // A window that dilation makes see only padding has no argmax (-1, output -inf).
                for (index_t o = 0; o < out_plane; ++o)
                    if (at[o] >= 0) plane[at[o]] += g[o];
            };
            detail::parallel_for(dy.size() / out_plane, dy.size() >= detail::parallel_grain,
                                 plane_gradient);
        },
        BackwardReads{.output = false, .inputs = {false}}));
}

namespace detail {

// Calls visit(ih0, ih1, iw0, iw1, divisor) for every output position of an average pool, in
// row-major output order, with the window clipped to the input.
template <class Visit>
void for_each_average_window(const PoolGeometry& g, bool count_include_pad, Visit&& visit) {
    for (index_t oh = 0; oh < g.out_h; ++oh)
        for (index_t ow = 0; ow < g.out_w; ++ow) {
            index_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
            index_t h1 = std::min(h0 + g.kernel_h, g.height + g.pad_h);
            index_t w1 = std::min(w0 + g.kernel_w, g.width + g.pad_w);
            const index_t padded_size = (h1 - h0) * (w1 - w0);
            h0 = std::max<index_t>(h0, 0);
            w0 = std::max<index_t>(w0, 0);
            h1 = std::min(h1, g.height);
            w1 = std::min(w1, g.width);
            visit(h0, h1, w0, w1, count_include_pad ? padded_size : (h1 - h0) * (w1 - w0));
        }
}

}  // namespace detail

// forward:  y = sum of x over the window / divisor, where the divisor counts the padding
//           inside the window when count_include_pad (PyTorch's default).
// backward: every x in the window gets dy / divisor.
template <class T>
Var<T> avg_pool2d(const Var<T>& x, const Pool2dOptions& options = {}) {
    if (options.dilation.h != 1 || options.dilation.w != 1)
        throw argument_error("avg_pool2d: dilation is not defined for average pooling");
    const detail::PoolGeometry g = detail::pool_geometry(x.shape(), options, "avg_pool2d");
    const index_t planes = x.shape()[0] * x.shape()[1];
    const index_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    Tensor<T> y = Tensor<T>::uninitialized(Shape{x.shape()[0], x.shape()[1], g.out_h, g.out_w});
    detail::parallel_for(planes, y.size() >= detail::parallel_grain, [&](index_t p, int) {
        const T* in = x.value().data() + p * in_plane;
        T* out = y.data() + p * out_plane;
        detail::for_each_average_window(
            g, options.count_include_pad,
            [&](index_t h0, index_t h1, index_t w0, index_t w1, index_t divisor) {
                T sum = 0;
                for (index_t h = h0; h < h1; ++h)
                    for (index_t w = w0; w < w1; ++w) sum += in[h * g.width + w];
                *out++ = sum / static_cast<T>(divisor);
            });
    });
    return x.tape().record(
        "avg_pool2d", std::move(y), {x},
        [g, planes, in_plane, out_plane, include_pad = options.count_include_pad](
            const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx_all = sink.of(0).data();
            detail::parallel_for(planes, dy.size() >= detail::parallel_grain, [&](index_t p, int) {
                T* dx = dx_all + p * in_plane;
                const T* g_out = dy.data() + p * out_plane;
                detail::for_each_average_window(
                    g, include_pad,
                    [&](index_t h0, index_t h1, index_t w0, index_t w1, index_t divisor) {
                        const T share = *g_out++ / static_cast<T>(divisor);
                        for (index_t h = h0; h < h1; ++h)
                            for (index_t w = w0; w < w1; ++w) dx[h * g.width + w] += share;
                    });
            });
        });
}

namespace detail {

// PyTorch's adaptive bins: output cell o covers [floor(o*in/out), ceil((o+1)*in/out)).
inline index_t adaptive_start(index_t o, index_t in, index_t out) { return (o * in) / out; }
inline index_t adaptive_end(index_t o, index_t in, index_t out) {
    return ((o + 1) * in + out - 1) / out;
}

template <class Visit>
void for_each_adaptive_window(index_t height, index_t width, index_t out_h, index_t out_w,
                              Visit&& visit) {
    for (index_t oh = 0; oh < out_h; ++oh)
        for (index_t ow = 0; ow < out_w; ++ow) {
            const index_t h0 = adaptive_start(oh, height, out_h),
                          h1 = adaptive_end(oh, height, out_h);
            const index_t w0 = adaptive_start(ow, width, out_w),
                          w1 = adaptive_end(ow, width, out_w);
            visit(h0, h1, w0, w1);
        }
}

}  // namespace detail

// forward:  y[n, c, oh, ow] = mean of x over PyTorch's adaptive bin (oh, ow); output 1x1 is
//           global average pooling.
// backward: every x in the bin gets dy / (bin size).
template <class T>
Var<T> adaptive_avg_pool2d(const Var<T>& x, Size2 output_size) {
    detail::expect_rank(x.shape(), 4, "adaptive_avg_pool2d input", "N, C, H, W");
    if (output_size.h < 1 || output_size.w < 1)
        throw argument_error(detail::concat("adaptive_avg_pool2d: output size ", output_size.h, "x",
                                            output_size.w, " must be positive"));
    const index_t height = x.shape()[2], width = x.shape()[3];
    if (height < 1 || width < 1)
        throw shape_error(detail::concat("adaptive_avg_pool2d: empty input ", x.shape()));
    const index_t out_h = output_size.h, out_w = output_size.w;
    const index_t planes = x.shape()[0] * x.shape()[1];
    Tensor<T> y = Tensor<T>::uninitialized(Shape{x.shape()[0], x.shape()[1], out_h, out_w});
    if (out_h == height && out_w == width) {
        // One value per bin (VGG's 7x7 pooling of a 224x224 image's features): a copy, and dy
        // passed back as it is, without the windows' four divisions per value (VGG-16's
        // 512 x 7 x 7: 0.15 ms each way by the windows, 2 us forward and 4 backward so).
        std::copy_n(x.value().data(), y.size(), y.data());
        return detail::routed_within_channels(x.tape().record(
            "adaptive_avg_pool2d", std::move(y), {x},
            [](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
                if (!sink.wants(0) || sink.pass_through(0)) return;
                bool fresh = false;
                T* dx = sink.of(0, fresh).data();
                detail::assign_or_add(detail::array(dx, dy.size()),
                                      detail::array(dy.data(), dy.size()), fresh);
            },
            BackwardReads{.output = false, .inputs = {false}}));
    }
    detail::parallel_for(planes, x.shape().numel() >= detail::parallel_grain, [&](index_t p, int) {
        const T* in = x.value().data() + p * height * width;
        T* out = y.data() + p * out_h * out_w;
        detail::for_each_adaptive_window(height, width, out_h, out_w,
                                         [&](index_t h0, index_t h1, index_t w0, index_t w1) {
                                             T sum = 0;
                                             for (index_t h = h0; h < h1; ++h)
                                                 for (index_t w = w0; w < w1; ++w)
                                                     sum += in[h * width + w];
                                             *out++ = sum / static_cast<T>((h1 - h0) * (w1 - w0));
                                         });
    });
    return detail::routed_within_channels(x.tape().record(
        "adaptive_avg_pool2d", std::move(y), {x},
        [height, width, out_h, out_w, planes](const Node<T>&, const Tensor<T>& dy,
                                              GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            // A gradient nothing has reached yet is written, not zeroed and added to, where
            // each input lies in exactly one bin (the bins divide the input evenly, as global
            // pooling's one bin does).
            bool fresh = false;
            T* dx_all = sink.of(0, fresh).data();
            const bool assign = fresh && height % out_h == 0 && width % out_w == 0;
            detail::parallel_for(
                planes, planes * height * width >= detail::parallel_grain, [&](index_t p, int) {
                    T* dx = dx_all + p * height * width;
                    if (fresh && !assign) std::fill_n(dx, height * width, T(0));
                    const T* g_out = dy.data() + p * out_h * out_w;
                    detail::for_each_adaptive_window(
                        height, width, out_h, out_w,
                        [&](index_t h0, index_t h1, index_t w0, index_t w1) {
                            const T share = *g_out++ / static_cast<T>((h1 - h0) * (w1 - w0));
                            for (index_t h = h0; h < h1; ++h)
                                for (index_t w = w0; w < w1; ++w)
                                    dx[h * width + w] = assign ? share : dx[h * width + w] + share;
                        });
                });
        }));
}

}  // namespace gradcam
