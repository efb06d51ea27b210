// relu(x) = max(x, 0). Its backward follows the rule the backward pass is run with, which is
// what turns one recorded graph into guided backpropagation or a deconvnet on demand.
#pragma once

#include <algorithm>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/vectorize.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

namespace detail {

// The gradient g that passes back through a ReLU under Rule, given on = [x > 0]: g or 0.
template <ReluRule Rule, class T>
T relu_gate(bool on, T g) {
    if constexpr (Rule == ReluRule::standard) return on ? g : T(0);
    if constexpr (Rule == ReluRule::guided) return on & (g > T(0)) ? g : T(0);
    if constexpr (Rule == ReluRule::deconvnet) return g > T(0) ? g : T(0);
}

// Calls body(gate) with gate(on, g) = relu_gate<rule>(on, g), the rule fixed at compile time so
// that a loop over values calling it vectorises without branches.
template <class T, class Body>
void with_relu_gate(ReluRule rule, Body&& body) {
    switch (rule) {
        case ReluRule::standard:
            return body([](bool on, T g) { return relu_gate<ReluRule::standard>(on, g); });
        case ReluRule::guided:
            return body([](bool on, T g) { return relu_gate<ReluRule::guided>(on, g); });
        case ReluRule::deconvnet:
            return body([](bool on, T g) { return relu_gate<ReluRule::deconvnet>(on, g); });
    }
}

}  // namespace detail

// forward:  y = max(x, 0)
// backward: standard  dx = dy * [x > 0]
//           guided    dx = dy * [x > 0] * [dy > 0]
//           deconvnet dx = dy * [dy > 0]
// [x > 0] is read from the output (y > 0 exactly when x > 0), so x need not be kept.
template <class T>
Var<T> relu(const Var<T>& x) {
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    T* ys = y.data();
    detail::parallel_chunks(y.size(), [&](index_t begin, index_t count) {
        detail::array(ys + begin, count) =
            detail::array(x.value().data() + begin, count).max(T(0));
    });
    return x.tape().record(
        "relu", std::move(y), {x},
        [](const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            bool fresh = false;
            T* dx_all = sink.of_elementwise(0, fresh).data();  // may be dy's own tensor
            const T* ys = self.value().data();
            detail::with_relu_gate<T>(sink.options().relu, [&](auto gate) {
                detail::parallel_chunks(dy.size(), [&](index_t begin, index_t count) {
                    const T* y = ys + begin;
                    const T* g = dy.data() + begin;
                    T* dx = dx_all + begin;
                    if (fresh) {
                        GRADCAM_INDEPENDENT_ITERATIONS
                        for (index_t i = 0; i < count; ++i) dx[i] = gate(y[i] > T(0), g[i]);
                    } else {
                        GRADCAM_INDEPENDENT_ITERATIONS
                        for (index_t i = 0; i < count; ++i) dx[i] += gate(y[i] > T(0), g[i]);
                    }
                });
            });
        },
        BackwardReads{.output = true, .inputs = {false}});
}

}  // namespace gradcam
