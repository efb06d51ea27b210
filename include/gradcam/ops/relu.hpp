// relu(x) = max(x, 0). Its backward follows the rule the backward pass is run with, which is
// what turns one recorded graph into guided backpropagation or a deconvnet on demand.
#pragma once

#include <algorithm>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

namespace detail {

// Calls use(gated) with the gradient that passes back through a ReLU whose output is `out`,
// given the gradient g that reaches it, under `rule` (Eigen arrays, element by element).
template <class Out, class G, class Use>
void relu_gated(ReluRule rule, const Out& out, const G& g, Use&& use) {
    const typename G::Scalar zero(0);
    switch (rule) {
        case ReluRule::standard:
            use((out > zero).select(g, zero));
            break;
        case ReluRule::guided:
            use((out > zero && g > zero).select(g, zero));
            break;
        case ReluRule::deconvnet:
            use(g.max(zero));
            break;
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
            T* dx_all = sink.of_elementwise(0, fresh).data();
            const ReluRule rule = sink.options().relu;
            detail::parallel_chunks(dy.size(), [&](index_t begin, index_t count) {
                auto dx = detail::array(dx_all + begin, count);
                detail::relu_gated(rule, detail::array(self.value().data() + begin, count),
                                   detail::array(dy.data() + begin, count),
                                   [&](const auto& gated) { detail::assign_or_add(dx, gated, fresh); });
            });
        },
        BackwardReads{.output = true, .inputs = {false}});
}

}  // namespace gradcam
