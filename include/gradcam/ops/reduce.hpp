// Ops that turn network outputs into the scalar being explained or trained: sum, mean,
// select (one index along an axis) and pick (one class per row).
#pragma once

#include <numeric>
#include <vector>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

// forward: y = sum of all elements (a scalar of shape []).   backward: dx += dy.
template <class T>
Var<T> sum(const Var<T>& x) {
    Tensor<T> y(Shape{}, detail::array(x.value().data(), x.value().size()).sum());
    return x.tape().record("sum", std::move(y), {x},
                           [](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
                               if (!sink.wants(0)) return;
                               Tensor<T>& dx = sink.of(0);
                               detail::array(dx.data(), dx.size()) += dy[0];
                           });
}

// forward: y = mean of all elements.   backward: dx += dy / numel.
template <class T>
Var<T> mean(const Var<T>& x) {
    if (x.shape().numel() == 0) throw shape_error("mean: input is empty");
    return scale(sum(x), T(1) / static_cast<T>(x.shape().numel()));
}

// forward: y = x[..., index, ...] along `axis`; that axis is removed, as torch.select.
// backward: dy goes back to the selected slice.
template <class T>
Var<T> select(const Var<T>& x, index_t axis, index_t index) {
    const Shape& s = x.shape();
    axis = s.normalise_axis(axis);
    if (index < 0 || index >= s[axis])
        throw shape_error(detail::concat("select: index ", index, " is out of range for axis ",
                                         axis, " of shape ", s));
    std::vector<index_t> dims = s.dims();
    const index_t extent = s[axis];
    dims.erase(dims.begin() + axis);
    index_t outer = 1, inner = 1;
    for (index_t a = 0; a < axis; ++a) outer *= s[a];
    for (index_t a = axis + 1; a < s.rank(); ++a) inner *= s[a];
    Tensor<T> y = Tensor<T>::uninitialized(Shape(dims));
    for (index_t o = 0; o < outer; ++o)
        std::copy_n(x.value().data() + (o * extent + index) * inner, inner, y.data() + o * inner);
    return x.tape().record(
        "select", std::move(y), {x},
        [outer, inner, extent, index](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx = sink.of(0).data();
            for (index_t o = 0; o < outer; ++o)
                for (index_t k = 0; k < inner; ++k)
                    dx[(o * extent + index) * inner + k] += dy[o * inner + k];
        });
}

// x: [N, K]; forward: y[n] = x[n, index[n]] (one class score per image).
// backward: dx[n, index[n]] += dy[n].
template <class T>
Var<T> pick(const Var<T>& x, const std::vector<index_t>& index) {
    detail::expect_rank(x.shape(), 2, "pick input", "N, classes");
    const index_t rows = x.shape()[0], cols = x.shape()[1];
    if (static_cast<index_t>(index.size()) != rows)
        throw shape_error(detail::concat("pick: ", index.size(), " indices given for input ",
                                         x.shape(), " with ", rows, " rows"));
    for (std::size_t n = 0; n < index.size(); ++n)
        if (index[n] < 0 || index[n] >= cols)
            throw shape_error(detail::concat("pick: index ", index[n], " for row ", n,
                                             " is out of range for input ", x.shape()));
    Tensor<T> y = Tensor<T>::uninitialized(Shape{rows});
    for (index_t n = 0; n < rows; ++n)
        y[n] = x.value()[n * cols + index[static_cast<std::size_t>(n)]];
    return x.tape().record(
        "pick", std::move(y), {x},
        [index, cols](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx = sink.of(0).data();
            for (index_t n = 0; n < dy.size(); ++n)
                dx[n * cols + index[static_cast<std::size_t>(n)]] += dy[n];
        });
}

}  // namespace gradcam
