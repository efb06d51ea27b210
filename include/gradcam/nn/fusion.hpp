// Conv2d -> BatchNorm2d -> (+ residual) -> ReLU, and Conv2d -> ReLU, as one op (ops/fused.hpp)
// wherever nothing needs the values in between: the batch norm normalises with its running
// statistics, the parameters take no gradients, and the tape allows it (Tape::may_fuse: nobody
// keeps those values or starts recording at them). Otherwise the modules run one after another.
// Either way the output has the same values and the same name (the ReLU's; the batch norm's
// when it is last), and the names in between are known to the tape (find() says why a fused one
// has no value).
#pragma once

#include <cstddef>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "gradcam/nn/layers.hpp"
#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/fused.hpp"

namespace gradcam::detail {

// May conv_batch_norm fuse these layers at all? Only the layers themselves, not subclasses
// (whose forward may differ); only with paths (the tape notes the fused-away values by name);
// and only a batch norm the fused op would accept, since its refusal would name the
// convolution. Layers that fail here run one by one, and the one at fault names itself.
template <class T>
bool fusable(nn::Conv2d<T>& conv, nn::BatchNorm2d<T>& bn, nn::ReLU<T>* relu) {
    if (typeid(conv) != typeid(nn::Conv2d<T>) || typeid(bn) != typeid(nn::BatchNorm2d<T>) ||
        (relu && typeid(*relu) != typeid(nn::ReLU<T>)) || conv.path().empty() || bn.path().empty())
        return false;
    const index_t channels = conv.weight().dim(0);
    if (bn.running_mean().size() != channels || bn.running_var().size() != channels ||
        bn.weight().size() != channels || bn.bias().size() != channels)
        return false;
    return variances_positive(std::as_const(bn.running_var()), static_cast<T>(bn.eps()));
}

// The output shape of conv on x, or the convolution's own error naming the layer: an input that
// does not fit fails before a fusion names anything.
template <class T>
Shape fused_conv_output(nn::Conv2d<T>& conv, const Var<T>& x) {
    return conv.in_context([&] {
        const Shape bias_shape = conv.bias() ? conv.bias()->shape() : Shape();
        const ConvGeometry g = conv_geometry(x.shape(), conv.weight().shape(),
                                             conv.bias() ? &bias_shape : nullptr, conv.options());
        return Shape{x.shape()[0], conv.weight().dim(0), g.out_h, g.out_w};
    });
}

}  // namespace gradcam::detail

namespace gradcam::nn {

// `residual` (a callable returning the Var to add before the ReLU, or nullptr) is called where
// a block adds its shortcut: after the batch norm when the modules run one by one, before the
// convolution when they are fused.
template <class T, class Residual = std::nullptr_t>
Var<T> conv_batch_norm(Conv2d<T>& conv, BatchNorm2d<T>& bn, const Var<T>& x,
                       ReLU<T>* relu = nullptr, Residual&& residual = nullptr) {
    constexpr bool has_residual = !std::is_same_v<std::remove_cvref_t<Residual>, std::nullptr_t>;
    Tape<T>& tape = x.tape();
    const bool bn_hidden = relu || has_residual;  // the batch norm's value is not the result
    const bool fuse = detail::fusable(conv, bn, relu) && !bn.training() &&
                      !tape.parameters_differentiable() &&
                      (bn_hidden ? tape.may_fuse(x, conv.path(), bn.path())
                                 : tape.may_fuse(x, conv.path()));
    const auto one_by_one = [&] {
        Var<T> y = bn(conv(x));
        if constexpr (has_residual) y = y + residual();
        return relu ? (*relu)(y) : y;
    };
    if (!fuse) return one_by_one();
    const Shape out = detail::fused_conv_output(conv, x);
    tape.name_fused(conv.path());
    if (bn_hidden) tape.name_fused(bn.path());
    Var<T> shortcut;
    if constexpr (has_residual) {
        shortcut = residual();
        if (!shortcut) throw argument_error("conv_batch_norm: the residual is an empty Var");
        // The add that would refuse it reports the mismatch, as it does unfused.
        if (shortcut.shape() != out) {
            const Var<T> sum = bn(conv(x)) + shortcut;
            return relu ? (*relu)(sum) : sum;
        }
    }
    const BatchNormConstants<T> constants{.running_mean = bn.running_mean(),
                                          .running_var = bn.running_var(),
                                          .gamma = &bn.weight(),
                                          .beta = &bn.bias(),
                                          .eps = static_cast<T>(bn.eps())};
    const Var<T> y = conv.in_context([&] {
        return conv2d_batch_norm(x, tape.parameter(conv.weight()),
                                 conv.bias() ? tape.parameter(*conv.bias()) : Var<T>(),
                                 conv.options(), constants, shortcut, relu != nullptr);
    });
    if (relu && !relu->path().empty())
        tape.name(y, relu->path());
    else if (!bn_hidden)
        tape.name(y, bn.path());
    return y;
}

// Conv2d -> ReLU as one op (conv2d_relu), as VGG's layers run, where nothing needs the
// convolution's value and its parameters take no gradients; otherwise one after the other.
// The output is named as the ReLU.
template <class T>
Var<T> conv_relu(Conv2d<T>& conv, ReLU<T>& relu, const Var<T>& x) {
    Tape<T>& tape = x.tape();
    const bool fuse = typeid(conv) == typeid(Conv2d<T>) && typeid(relu) == typeid(ReLU<T>) &&
                      !conv.path().empty() && !tape.parameters_differentiable() &&
                      tape.may_fuse(x, conv.path());
    if (!fuse) return relu(conv(x));
    detail::fused_conv_output(conv, x);
    tape.name_fused(conv.path());
    const Var<T> y = conv.in_context([&] {
        return conv2d_relu(x, tape.parameter(conv.weight()),
                           conv.bias() ? tape.parameter(*conv.bias()) : Var<T>(), conv.options());
    });
    if (!relu.path().empty()) tape.name(y, relu.path());
    return y;
}

}  // namespace gradcam::nn
