// Bilinear resizing of maps with half-pixel centres: the same numbers as PyTorch's
// interpolate(mode="bilinear", align_corners=False) and OpenCV's INTER_LINEAR upsampling.
#pragma once

#include <algorithm>
#include <vector>

#include "gradcam/tensor.hpp"

namespace gradcam {

namespace detail {

// For each output index: the two source indices and the weight of the second.
struct LinearTaps {
    std::vector<index_t> lo, hi;
    std::vector<double> frac;
};

// src = (dst + 0.5) * in / out - 0.5, clamped at 0; the upper neighbour is clamped at in - 1.
inline LinearTaps linear_taps(index_t in, index_t out) {
    LinearTaps taps;
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (index_t d = 0; d < out; ++d) {
        const double src = std::max((static_cast<double>(d) + 0.5) * scale - 0.5, 0.0);
        const index_t lo = std::min(static_cast<index_t>(src), in - 1);
        taps.lo.push_back(lo);
        taps.hi.push_back(std::min(lo + 1, in - 1));
        taps.frac.push_back(src - static_cast<double>(lo));
    }
    return taps;
}

}  // namespace detail

// Resizes the last two axes of `maps` ([..., H, W]) to out_h x out_w.
template <class T>
Tensor<T> resize_bilinear(const Tensor<T>& maps, index_t out_h, index_t out_w) {
    if (maps.rank() < 2)
        throw shape_error(detail::concat("resize_bilinear: input ", maps.shape(),
                                         " needs at least two axes (H, W)"));
    if (out_h < 1 || out_w < 1)
        throw argument_error(detail::concat("resize_bilinear: output size ", out_h, "x", out_w,
                                            " must be positive"));
    const index_t in_h = maps.dim(-2), in_w = maps.dim(-1);
    if (in_h < 1 || in_w < 1)
        throw shape_error(detail::concat("resize_bilinear: empty input ", maps.shape()));
    std::vector<index_t> dims = maps.shape().dims();
    dims[dims.size() - 2] = out_h;
    dims[dims.size() - 1] = out_w;
    Tensor<T> out = Tensor<T>::uninitialized(Shape(dims));
    const detail::LinearTaps rows = detail::linear_taps(in_h, out_h);
    const detail::LinearTaps cols = detail::linear_taps(in_w, out_w);
    const index_t planes = maps.size() / (in_h * in_w);
    // Separably: each input row that an output row reads, across to out_w columns once; then
    // each output row from two of those (the same sums as the four-tap form, and whole rows
    // that vectorise).
    std::vector<T> across(static_cast<std::size_t>(in_h * out_w));
    std::vector<char> done(static_cast<std::size_t>(in_h));
    for (index_t p = 0; p < planes; ++p) {
        const T* in = maps.data() + p * in_h * in_w;
        T* o = out.data() + p * out_h * out_w;
        std::fill(done.begin(), done.end(), char(0));
        const auto across_row = [&](index_t y) {
            T* row = across.data() + y * out_w;
            if (!done[static_cast<std::size_t>(y)]) {
                const T* line = in + y * in_w;
                for (index_t x = 0; x < out_w; ++x) {
                    const std::size_t cx = static_cast<std::size_t>(x);
                    const T fx = static_cast<T>(cols.frac[cx]);
                    row[x] = (T(1) - fx) * line[cols.lo[cx]] + fx * line[cols.hi[cx]];
                }
                done[static_cast<std::size_t>(y)] = 1;
            }
            return row;
        };
        for (index_t y = 0; y < out_h; ++y) {
            const std::size_t ry = static_cast<std::size_t>(y);
            const T fy = static_cast<T>(rows.frac[ry]);
            const T* upper = across_row(rows.lo[ry]);
            const T* lower = across_row(rows.hi[ry]);
            T* line = o + y * out_w;
            for (index_t x = 0; x < out_w; ++x) line[x] = (T(1) - fy) * upper[x] + fy * lower[x];
        }
    }
    return out;
}

}  // namespace gradcam
