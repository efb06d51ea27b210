// Conv2d -> BatchNorm2d -> (+ residual) -> ReLU as one op (ops/fused.hpp) wherever nothing
// needs the values in between: the batch norm normalises with its running statistics, the
// parameters take no gradients, and the tape allows it (Tape::may_fuse: nobody keeps those
// values or starts recording at them). Otherwise the modules run one after another. Either way
// the output has the same values and the same name (the ReLU's; the batch norm's when it is
// last), and the names in between are known to the tape (find() says why a fused one has no
// value).
#pragma once

#include <cstddef>
#include <type_traits>

#include "gradcam/nn/layers.hpp"
#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/fused.hpp"

namespace gradcam::nn {

// `residual` (a callable returning the Var to add before the ReLU, or nullptr) is called where
// a block adds its shortcut: after the batch norm when the modules run one by one.
template <class T, class Residual = std::nullptr_t>
Var<T> conv_batch_norm(Conv2d<T>& conv, BatchNorm2d<T>& bn, const Var<T>& x,
                       ReLU<T>* relu = nullptr, Residual&& residual = nullptr) {
    constexpr bool has_residual = !std::is_same_v<std::remove_cvref_t<Residual>, std::nullptr_t>;
    Tape<T>& tape = x.tape();
    const bool bn_inside = relu || has_residual;  // the batch norm's value is not the result
    // Mismatched layers run one by one, so that the layer at fault reports itself.
    const bool fits = bn.running_mean().size() == conv.weight().dim(0) && !conv.path().empty() &&
                      !bn.path().empty();
    const bool fuse = fits && !bn.training() && !tape.parameters_differentiable() &&
                      (bn_inside ? tape.may_fuse(x, conv.path(), bn.path()) : tape.may_fuse(x, conv.path()));
    if (!fuse) {
        Var<T> y = bn(conv(x));
        if constexpr (has_residual) y = y + residual();
        return relu ? (*relu)(y) : y;
    }
    tape.name_fused(conv.path());
    if (bn_inside) tape.name_fused(bn.path());
    Var<T> shortcut;
    if constexpr (has_residual) shortcut = residual();
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
    else if (!has_residual)
        tape.name(y, bn.path());
    return y;
}

}  // namespace gradcam::nn
