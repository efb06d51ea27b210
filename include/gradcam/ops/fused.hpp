// A convolution, its batch norm at inference, an optional residual and an optional ReLU as one
// op, the way inference engines run a ResNet:
//   z = conv2d(x, W) + b,   y = relu?((z - mean_c) * a_c + beta_c + residual?),
//   a_c = gamma_c / sqrt(var_c + eps);
// and a convolution and its ReLU as one, as VGG's layers run: y = relu(conv2d(x, W) + b).
// The tail is applied by the convolution's lowering to each block of outputs as it writes them
// (detail::ConvTail), where the separate ops make passes that each write a new tensor.
// The batch norm's tensors are constants of the op (no gradient reaches them);
// nn::conv_batch_norm chooses it only where that holds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradcam/detail/vectorize.hpp"
#include "gradcam/ops/batch_norm.hpp"
#include "gradcam/ops/conv.hpp"
#include "gradcam/ops/relu.hpp"

namespace gradcam {

namespace detail {

// Where conv2d_batch_norm's backward writes the gradient g that passes its ReLU: dz = g * scale
// for the convolution, and into the residual's gradient (assigned when `fresh`, else added).
// Either may be null; `residual` may be dy's own tensor.
template <class T>
struct GatedOutputs {
    T* dz;
    T scale;
    T* residual;
    bool fresh;
};

// One plane of that, of n values, the gradient that passes the ReLU being gated(i). Plain loops,
// one per combination of outputs, which GCC vectorises without branches. Eigen's select over the
// byte mask cast to T took 26 us on 512 planes of 7x7 in cache (one thread), these 7; in a
// Guided Grad-CAM, where the masks come from memory, ResNet-18's gates went 0.80 -> 0.76 ms.
template <class T, class Gated>
void write_gated(index_t n, Gated gated, const GatedOutputs<T>& out) {
    T* dz = out.dz;
    T* dr = out.residual;
    const T scale = out.scale;
    if (dz && dr && out.fresh) {
        GRADCAM_INDEPENDENT_ITERATIONS
        for (index_t i = 0; i < n; ++i) {
            const T v = gated(i);
            dz[i] = v * scale;
            dr[i] = v;
        }
    } else if (dz && dr) {
        GRADCAM_INDEPENDENT_ITERATIONS
        for (index_t i = 0; i < n; ++i) {
            const T v = gated(i);
            dz[i] = v * scale;
            dr[i] += v;
        }
    } else if (dz) {
        GRADCAM_INDEPENDENT_ITERATIONS
        for (index_t i = 0; i < n; ++i) dz[i] = gated(i) * scale;
    } else if (dr && out.fresh) {
        GRADCAM_INDEPENDENT_ITERATIONS
        for (index_t i = 0; i < n; ++i) dr[i] = gated(i);
    } else if (dr) {
        GRADCAM_INDEPENDENT_ITERATIONS
        for (index_t i = 0; i < n; ++i) dr[i] += gated(i);
    }
}

}  // namespace detail

// A batch norm at inference: running statistics and the optional affine parameters.
template <class T>
struct BatchNormConstants {
    const Tensor<T>& running_mean;
    const Tensor<T>& running_var;
    const Tensor<T>* gamma = nullptr;  // null: scale 1 (affine=False)
    const Tensor<T>* beta = nullptr;   // null: shift 0
    T eps = T(1e-5);
};

namespace detail {

// The fused op, with the batch norm (bn) or without it (a_c = 1).
template <class T>
Var<T> conv2d_fused(const Var<T>& x, const Var<T>& weight, const Var<T>& bias,
                    const Conv2dOptions& options, const BatchNormConstants<T>* bn,
                    const Var<T>& residual, bool relu) {
    const Shape bias_shape = bias ? bias.shape() : Shape();
    const ConvGeometry g =
        conv_geometry(x.shape(), weight.shape(), bias ? &bias_shape : nullptr, options);
    const index_t batch = x.shape()[0], channels = weight.shape()[0], plane = g.cols();
    const Shape out_shape{batch, channels, g.out_h, g.out_w};
    if (bn)
        check_batch_norm(out_shape, bn->gamma ? &bn->gamma->shape() : nullptr,
                         bn->beta ? &bn->beta->shape() : nullptr, bn->running_mean,
                         bn->running_var);
    if (residual && residual.shape() != out_shape)
        throw shape_error(concat("conv2d_batch_norm: the residual has shape ", residual.shape(),
                                 " but the convolution's output has ", out_shape));
    std::vector<T> mean, a, b;
    ConvTail<T> tail;
    if (bias) tail.bias = bias.value().data();
    if (bn) {
        mean.assign(bn->running_mean.begin(), bn->running_mean.end());
        channel_affine(bn->gamma, bn->beta, running_inv_std(bn->running_var, bn->eps), a, b);
        tail.mean = mean.data();
        tail.scale = a.data();
        tail.shift = b.data();
    } else {
        a.assign(static_cast<std::size_t>(channels), T(1));
    }
    if (residual) tail.residual = residual.value().data();
    tail.relu = relu;
    std::vector<Var<T>> inputs{x, weight};
    if (bias) inputs.push_back(bias);
    if (residual) inputs.push_back(residual);
    // The backward gates by [y > 0], kept a byte per value (a tensor, so from the buffer cache)
    // rather than by y itself, which is then freed as in inference once the forward has used it.
    Tensor<std::uint8_t> relu_mask;
    if (relu && x.tape().will_record(inputs)) {
        relu_mask = Tensor<std::uint8_t>::uninitialized(out_shape);  // every value is written
        tail.relu_mask = relu_mask.data();
    }
    Tensor<T> y = conv2d_forward(x.value(), weight.value(), tail, g, options.groups);

    const bool has_bias = static_cast<bool>(bias);
    const std::size_t residual_at = has_bias ? 3 : 2;
    auto conv_backward = conv2d_backward<T>(g, options.groups, channels, has_bias);
    auto backward = [conv_backward = std::move(conv_backward), a = std::move(a),
                     relu_mask = std::move(relu_mask), channels, plane, relu,
                     has_residual = static_cast<bool>(residual), has_bias,
                     residual_at](const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
        const bool want_conv = sink.wants(0) || sink.wants(1) || (has_bias && sink.wants(2));
        const bool want_residual = has_residual && sink.wants(residual_at);
        bool fresh = false;
        // The residual's gradient is g, element by element: it may take dy's own tensor, else
        // dz does (overwriting dy in place), else dz is a new tensor.
        T* dr = want_residual ? sink.of_elementwise(residual_at, fresh).data() : nullptr;
        std::unique_ptr<Tensor<T>> own = want_conv ? sink.take_own() : nullptr;
        Tensor<T> new_dz = want_conv && !own ? Tensor<T>::uninitialized(dy.shape()) : Tensor<T>();
        Tensor<T>& dz = own ? *own : new_dz;
        const ReluRule rule = sink.options().relu;
        parallel_for(dy.dim(0) * channels, dy.size() >= parallel_grain, [&](index_t item, int) {
            const index_t offset = item * plane;
            const GatedOutputs<T> out{want_conv ? dz.data() + offset : nullptr,
                                      a[static_cast<std::size_t>(item % channels)],
                                      dr ? dr + offset : nullptr, fresh};
            const T* g = dy.data() + offset;
            if (relu)
                with_relu_gate<T>(rule, [&, on = relu_mask.data() + offset](auto gate) {
                    write_gated(
                        plane, [=](index_t i) { return gate(on[i] != 0, g[i]); }, out);
                });
            else
                write_gated(
                    plane, [=](index_t i) { return g[i]; }, out);
        });
        if (want_conv) conv_backward(self, dz, sink);
    };

    const std::string op = std::string("conv2d") + (bn ? "+batch_norm2d" : "") +
                           (residual ? "+add" : "") + (relu ? "+relu" : "");
    // x only for the weight gradient; the bias's and residual's gradients need no values.
    const BackwardReads reads{.output = false, .inputs = {weight.differentiable(), true}};
    return x.tape().record(op, std::move(y), inputs, std::move(backward), reads);
}

}  // namespace detail

// forward:  as above; the batch norm's arithmetic is batch_norm2d's, so the values are the
//           same as those of the separate ops.
// backward: g = dy through the ReLU (under the pass's ReluRule, by the sign of y kept as a
//           byte per value), d residual += g,
//           then conv2d's backward with dz = g * a_c.
template <class T>
Var<T> conv2d_batch_norm(const Var<T>& x, const Var<T>& weight, const Var<T>& bias,
                         const Conv2dOptions& options, const BatchNormConstants<T>& bn,
                         const Var<T>& residual = {}, bool relu = false) {
    return detail::conv2d_fused(x, weight, bias, options, &bn, residual, relu);
}

// forward:  y = relu(conv2d(x, W) + b), the same values as the separate ops.
// backward: dz = dy through the ReLU, as above, then conv2d's backward.
template <class T>
Var<T> conv2d_relu(const Var<T>& x, const Var<T>& weight, const Var<T>& bias,
                   const Conv2dOptions& options = {}) {
    return detail::conv2d_fused<T>(x, weight, bias, options, nullptr, Var<T>(), true);
}

}  // namespace gradcam
