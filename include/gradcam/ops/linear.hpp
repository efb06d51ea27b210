// The fully connected layer: y = x W^T + b, one GEMM for the whole batch.
#pragma once

#include "gradcam/detail/eigen.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

// x: [N, in], W: [out, in], b: [out] (optional), y: [N, out].
// forward:  Y = X W^T + 1 b^T
// backward: dX += dY W,  dW += dY^T X,  db += column sums of dY.
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight, const Var<T>& bias) {
    detail::expect_rank(x.shape(), 2, "linear input", "N, in_features");
    detail::expect_rank(weight.shape(), 2, "linear weight", "out_features, in_features");
    const index_t batch = x.shape()[0], in = x.shape()[1], out = weight.shape()[0];
    if (weight.shape()[1] != in)
        throw shape_error(detail::concat("linear: input ", x.shape(), " has ", in,
                                         " features but weight ", weight.shape(), " expects ",
                                         weight.shape()[1]));
    if (bias && bias.shape() != Shape{out})
        throw shape_error(
            detail::concat("linear: bias has shape ", bias.shape(), ", expected [", out, "]"));

    Tensor<T> y = Tensor<T>::uninitialized(Shape{batch, out});
    auto ym = detail::matrix(y.data(), batch, out);
    ym.noalias() = detail::matrix(x.value().data(), batch, in) *
                   detail::matrix(weight.value().data(), out, in).transpose();
    if (bias) ym.rowwise() += detail::ConstVectorMap<T>(bias.value().data(), out).transpose();

    auto backward = [batch, in, out](const Node<T>& self, const Tensor<T>& dy,
                                     GradientSink<T>& sink) {
        auto g = detail::matrix(dy.data(), batch, out);
        if (sink.wants(0))
            detail::matrix(sink.of(0).data(), batch, in).noalias() +=
                g * detail::matrix(self.input(1).value().data(), out, in);
        if (sink.wants(1))
            detail::matrix(sink.of(1).data(), out, in).noalias() +=
                g.transpose() * detail::matrix(self.input(0).value().data(), batch, in);
        if (self.input_count() > 2 && sink.wants(2))
            detail::VectorMap<T>(sink.of(2).data(), out) += g.colwise().sum().transpose();
    };
    if (bias)
        return x.tape().record("linear", std::move(y), {x, weight, bias}, std::move(backward));
    return x.tape().record("linear", std::move(y), {x, weight}, std::move(backward));
}

template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight) {
    return linear(x, weight, Var<T>());
}

}  // namespace gradcam
