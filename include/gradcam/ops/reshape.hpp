// Ops that move values without changing them: reshape, flatten, and concat along an axis.
#pragma once

#include <algorithm>
#include <vector>

#include "gradcam/tape.hpp"

namespace gradcam {

// forward: the same values under `shape`.   backward: dx = dy under x's shape.
template <class T>
Var<T> reshape(const Var<T>& x, Shape shape) {
    if (shape.numel() != x.shape().numel())
        throw shape_error(detail::concat("reshape: cannot view input ", x.shape(), " as ", shape));
    Tensor<T> y = x.value().reshaped(std::move(shape));
    Var<T> result = x.tape().record("reshape", std::move(y), {x},
                                    [](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
                                        if (!sink.wants(0)) return;
                                        Tensor<T>& dx = sink.of(0);
                                        for (index_t i = 0; i < dx.size(); ++i) dx[i] += dy[i];
                                    });
    x.tape().set_routing(result, GradientRouting::same_order);
    return result;
}

// [N, d1, d2, ...] -> [N, d1 * d2 * ...], as torch.flatten(x, 1).
template <class T>
Var<T> flatten(const Var<T>& x) {
    if (x.shape().rank() < 2)
        throw shape_error(
            detail::concat("flatten: input ", x.shape(), " has no axes after the batch axis"));
    const index_t batch = x.shape()[0];
    return reshape(x, Shape{batch, batch == 0 ? 0 : x.shape().numel() / batch});
}

// forward: the inputs side by side along `axis` (channels by default); all other extents equal.
// backward: each input gets its slice of dy.
template <class T>
Var<T> concat(const std::vector<Var<T>>& parts, index_t axis = 1) {
    if (parts.empty()) throw argument_error("concat: no inputs");
    const Shape& first = parts[0].shape();
    axis = first.normalise_axis(axis);
    std::vector<index_t> dims = first.dims();
    dims[static_cast<std::size_t>(axis)] = 0;
    for (const Var<T>& p : parts) {
        const Shape& s = p.shape();
        bool fits = s.rank() == first.rank();
        for (index_t a = 0; fits && a < s.rank(); ++a) fits = a == axis || s[a] == first[a];
        if (!fits)
            throw shape_error(detail::concat("concat along axis ", axis, ": shapes ", first,
                                             " and ", s, " differ off that axis"));
        dims[static_cast<std::size_t>(axis)] += s[axis];
    }
    // Each input is `outer` blocks of (its extent on axis) * inner values.
    index_t outer = 1, inner = 1;
    for (index_t a = 0; a < axis; ++a) outer *= first[a];
    for (index_t a = axis + 1; a < first.rank(); ++a) inner *= first[a];
    const index_t out_block = dims[static_cast<std::size_t>(axis)] * inner;

    Tensor<T> y = Tensor<T>::uninitialized(Shape(dims));
    index_t offset = 0;
    for (const Var<T>& p : parts) {
        const index_t block = p.shape()[axis] * inner;
        for (index_t o = 0; o < outer; ++o)
            std::copy_n(p.value().data() + o * block, block, y.data() + o * out_block + offset);
        offset += block;
    }
    auto backward = [outer, inner, out_block, axis](const Node<T>& self, const Tensor<T>& dy,
                                                    GradientSink<T>& sink) {
        index_t offset = 0;
        for (std::size_t i = 0; i < self.input_count(); ++i) {
            const index_t block = self.input(i).value().shape()[axis] * inner;
            if (sink.wants(i)) {
                T* dx = sink.of(i).data();
                for (index_t o = 0; o < outer; ++o)
                    for (index_t k = 0; k < block; ++k)
                        dx[o * block + k] += dy[o * out_block + offset + k];
            }
            offset += block;
        }
    };
    return parts[0].tape().record("concat", std::move(y), parts, std::move(backward));
}

// The parameter-free shortcut of CIFAR ResNets ("option A", He et al. 2016, Sec. 4.2): keep
// every `stride`-th row and column and add `pad` zero channels on each side.
// forward:  y[n, c + pad, h, w] = x[n, c, h * stride, w * stride], zero in the added channels.
// backward: dx[n, c, h * stride, w * stride] += dy[n, c + pad, h, w].
template <class T>
Var<T> subsample_pad_channels(const Var<T>& x, index_t stride, index_t pad) {
    detail::expect_rank(x.shape(), 4, "subsample_pad_channels input", "N, C, H, W");
    if (stride < 1 || pad < 0)
        throw argument_error(detail::concat("subsample_pad_channels: stride ", stride, " must be positive and pad ",
                                            pad, " non-negative"));
    const index_t batch = x.shape()[0], channels = x.shape()[1], height = x.shape()[2], width = x.shape()[3];
    const index_t out_h = (height + stride - 1) / stride, out_w = (width + stride - 1) / stride;
    const index_t out_channels = channels + 2 * pad;
    Tensor<T> y(Shape{batch, out_channels, out_h, out_w});
    for (index_t n = 0; n < batch; ++n)
        for (index_t c = 0; c < channels; ++c)
            for (index_t h = 0; h < out_h; ++h)
                for (index_t w = 0; w < out_w; ++w)
                    y(n, c + pad, h, w) = x.value()[((n * channels + c) * height + h * stride) * width + w * stride];
    return x.tape().record(
        "subsample_pad_channels", std::move(y), {x},
        [=](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx = sink.of(0).data();
            for (index_t n = 0; n < batch; ++n)
                for (index_t c = 0; c < channels; ++c)
                    for (index_t h = 0; h < out_h; ++h)
                        for (index_t w = 0; w < out_w; ++w)
                            dx[((n * channels + c) * height + h * stride) * width + w * stride] +=
                                dy[((n * out_channels + c + pad) * out_h + h) * out_w + w];
        });
}

}  // namespace gradcam
