// softmax and log_softmax along one axis, computed stably (shifted by the maximum).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "gradcam/tape.hpp"

namespace gradcam {

namespace detail {

// Calls visit(offset, stride, extent) for every line along `axis`: the line's elements are
// at offset + k * stride, k < extent.
template <class Visit>
void for_each_line(const Shape& s, index_t axis, Visit&& visit) {
    index_t outer = 1, inner = 1;
    for (index_t a = 0; a < axis; ++a) outer *= s[a];
    for (index_t a = axis + 1; a < s.rank(); ++a) inner *= s[a];
    for (index_t o = 0; o < outer; ++o)
        for (index_t i = 0; i < inner; ++i) visit(o * s[axis] * inner + i, inner, s[axis]);
}

// y = log_softmax(x) along `axis`.
template <class T>
Tensor<T> log_softmax_values(const Tensor<T>& x, index_t axis) {
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    for_each_line(x.shape(), axis, [&](index_t offset, index_t stride, index_t extent) {
        T top = -std::numeric_limits<T>::infinity();
        for (index_t k = 0; k < extent; ++k) top = std::max(top, x[offset + k * stride]);
        T total = 0;
        for (index_t k = 0; k < extent; ++k) total += std::exp(x[offset + k * stride] - top);
        const T log_total = top + std::log(total);
        for (index_t k = 0; k < extent; ++k)
            y[offset + k * stride] = x[offset + k * stride] - log_total;
    });
    return y;
}

}  // namespace detail

// forward:  y_k = exp(x_k) / sum_j exp(x_j)
// backward: dx_k = y_k * (dy_k - sum_j dy_j y_j)
template <class T>
Var<T> softmax(const Var<T>& x, index_t axis = -1) {
    axis = x.shape().normalise_axis(axis);
    Tensor<T> y = detail::log_softmax_values(x.value(), axis);
    for (T& v : y) v = std::exp(v);
    return x.tape().record("softmax", std::move(y), {x},
                           [axis](const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
                               if (!sink.wants(0)) return;
                               const Tensor<T>& y = self.value();
                               T* dx = sink.of(0).data();
                               detail::for_each_line(
                                   y.shape(), axis,
                                   [&](index_t offset, index_t stride, index_t extent) {
                                       T dot = 0;
                                       for (index_t k = 0; k < extent; ++k)
                                           dot += dy[offset + k * stride] * y[offset + k * stride];
                                       for (index_t k = 0; k < extent; ++k) {
                                           const index_t i = offset + k * stride;
                                           dx[i] += y[i] * (dy[i] - dot);
                                       }
                                   });
                           });
}

// forward:  y_k = x_k - log sum_j exp(x_j)
// backward: dx_k = dy_k - softmax(x)_k * sum_j dy_j
template <class T>
Var<T> log_softmax(const Var<T>& x, index_t axis = -1) {
    axis = x.shape().normalise_axis(axis);
    return x.tape().record("log_softmax", detail::log_softmax_values(x.value(), axis), {x},
                           [axis](const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
                               if (!sink.wants(0)) return;
                               const Tensor<T>& y = self.value();
                               T* dx = sink.of(0).data();
                               detail::for_each_line(
                                   y.shape(), axis,
                                   [&](index_t offset, index_t stride, index_t extent) {
                                       T total = 0;
                                       for (index_t k = 0; k < extent; ++k)
                                           total += dy[offset + k * stride];
                                       for (index_t k = 0; k < extent; ++k) {
                                           const index_t i = offset + k * stride;
                                           dx[i] += dy[i] - std::exp(y[i]) * total;
                                       }
                                   });
                           });
}

}  // namespace gradcam
