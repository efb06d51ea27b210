// Elementwise arithmetic on tensors of one shape: add (residual connections), sub, mul
// (feature fusion, gating), and scaling by a constant.
#pragma once

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

// forward: y = a + b.   backward: da = dy, db = dy (the last of them takes dy itself, when
// nothing else has reached it: a residual connection's gradient is not copied).
template <class T>
Var<T> add(const Var<T>& a, const Var<T>& b) {
    detail::expect_same_shape(a.shape(), b.shape(), "add");
    Tensor<T> y = Tensor<T>::uninitialized(a.shape());
    T* ys = y.data();
    detail::parallel_chunks(y.size(), [&](index_t begin, index_t count) {
        detail::array(ys + begin, count) = detail::array(a.value().data() + begin, count) +
                                           detail::array(b.value().data() + begin, count);
    });
    return a.tape().record("add", std::move(y), {a, b},
                           [](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
                               for (std::size_t i : {0u, 1u}) {
                                   if (!sink.wants(i)) continue;
                                   if ((i == 1 || !sink.wants(1)) && sink.pass_through(i)) continue;
                                   bool fresh = false;
                                   T* dx = sink.of(i, fresh).data();  // sets fresh first
                                   detail::parallel_chunks(dy.size(), [&](index_t begin, index_t count) {
                                       detail::assign_or_add(detail::array(dx + begin, count),
                                                             detail::array(dy.data() + begin, count),
                                                             fresh);
                                   });
                               }
                           });
}

// forward: y = a - b.   backward: da = dy, db = -dy.
template <class T>
Var<T> sub(const Var<T>& a, const Var<T>& b) {
    detail::expect_same_shape(a.shape(), b.shape(), "sub");
    Tensor<T> y = Tensor<T>::uninitialized(a.shape());
    const index_t n = y.size();
    detail::array(y.data(), n) =
        detail::array(a.value().data(), n) - detail::array(b.value().data(), n);
    return a.tape().record(
        "sub", std::move(y), {a, b},
        [](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            const index_t n = dy.size();
            if (sink.wants(0)) detail::array(sink.of(0).data(), n) += detail::array(dy.data(), n);
            if (sink.wants(1)) detail::array(sink.of(1).data(), n) -= detail::array(dy.data(), n);
        });
}

// forward: y = a * b (elementwise).   backward: da = dy * b, db = dy * a.
template <class T>
Var<T> mul(const Var<T>& a, const Var<T>& b) {
    detail::expect_same_shape(a.shape(), b.shape(), "mul");
    Tensor<T> y = Tensor<T>::uninitialized(a.shape());
    const index_t n = y.size();
    detail::array(y.data(), n) =
        detail::array(a.value().data(), n) * detail::array(b.value().data(), n);
    return a.tape().record("mul", std::move(y), {a, b},
                           [](const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
                               const index_t n = dy.size();
                               auto g = detail::array(dy.data(), n);
                               if (sink.wants(0))
                                   detail::array(sink.of(0).data(), n) +=
                                       g * detail::array(self.input(1).value().data(), n);
                               if (sink.wants(1))
                                   detail::array(sink.of(1).data(), n) +=
                                       g * detail::array(self.input(0).value().data(), n);
                           });
}

// forward: y = s * x.   backward: dx = s * dy.
template <class T>
Var<T> scale(const Var<T>& x, T s) {
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    const index_t n = y.size();
    detail::array(y.data(), n) = detail::array(x.value().data(), n) * s;
    return x.tape().record("scale", std::move(y), {x},
                           [s](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
                               if (sink.wants(0))
                                   detail::array(sink.of(0).data(), dy.size()) +=
                                       detail::array(dy.data(), dy.size()) * s;
                           });
}

template <class T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) {
    return add(a, b);
}
template <class T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) {
    return sub(a, b);
}
template <class T>
Var<T> operator*(const Var<T>& a, const Var<T>& b) {
    return mul(a, b);
}
template <class T>
Var<T> operator*(T s, const Var<T>& x) {
    return scale(x, s);
}
template <class T>
Var<T> operator-(const Var<T>& x) {
    return scale(x, T(-1));
}

}  // namespace gradcam
