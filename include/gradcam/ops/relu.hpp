// relu(x) = max(x, 0). Its backward follows the rule the backward pass is run with, which is
// what turns one recorded graph into guided backpropagation or a deconvnet on demand.
#pragma once

#include <algorithm>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

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
                auto out = detail::array(self.value().data() + begin, count);
                auto g = detail::array(dy.data() + begin, count);
                auto dx = detail::array(dx_all + begin, count);
                const T zero(0);
                switch (rule) {
                    case ReluRule::standard:
                        detail::assign_or_add(dx, (out > zero).select(g, zero), fresh);
                        break;
                    case ReluRule::guided:
                        detail::assign_or_add(dx, (out > zero && g > zero).select(g, zero), fresh);
                        break;
                    case ReluRule::deconvnet:
                        detail::assign_or_add(dx, g.max(zero), fresh);
                        break;
                }
            });
        });
}

}  // namespace gradcam
