// Dropout (Srivastava et al. 2014), as PyTorch defines it: at inference the identity; in
// training each value is zeroed with probability p and the survivors scaled by 1 / (1 - p).
#pragma once

#include <vector>

#include "gradcam/random.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

// Inference.   forward: y = x.   backward: dx = dy.
template <class T>
Var<T> dropout(const Var<T>& x) {
    return x;
}

// Training.   forward: y = x * m / (1 - p), m ~ Bernoulli(1 - p) per value.
//             backward: dx = dy * m / (1 - p).
template <class T>
Var<T> dropout(const Var<T>& x, double p, Random& random) {
    if (p < 0 || p >= 1)
        throw argument_error(detail::concat("dropout: p = ", p, " is outside [0, 1)"));
    const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
    std::vector<T> mask(static_cast<std::size_t>(x.shape().numel()));
    for (T& m : mask) m = random.uniform() < p ? T(0) : keep_scale;
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    for (index_t i = 0; i < y.size(); ++i) y[i] = x.value()[i] * mask[static_cast<std::size_t>(i)];
    return x.tape().record(
        "dropout", std::move(y), {x},
        [mask = std::move(mask)](const Node<T>&, const Tensor<T>& dy, GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx = sink.of(0).data();
            for (index_t i = 0; i < dy.size(); ++i)
                dx[i] += dy[i] * mask[static_cast<std::size_t>(i)];
        });
}

}  // namespace gradcam
