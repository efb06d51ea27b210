// Batch normalisation of NCHW tensors in inference mode: each channel is normalised with its
// running statistics, then scaled and shifted (Ioffe & Szegedy 2015).
#pragma once

#include <cmath>
#include <vector>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

// forward:  y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c, i.e. y = x * a_c + b_c
// backward: dx = dy * a_c,  dgamma_c += sum dy * (x - mean_c) / sqrt(var_c + eps),
//           dbeta_c += sum dy.  The running statistics are constants.
// gamma and beta may be empty Vars (affine=False).
template <class T>
Var<T> batch_norm2d(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta,
                    const Tensor<T>& running_mean, const Tensor<T>& running_var, T eps = T(1e-5)) {
    detail::expect_rank(x.shape(), 4, "batch_norm2d input", "N, C, H, W");
    const index_t batch = x.shape()[0], channels = x.shape()[1];
    const index_t plane = x.shape()[2] * x.shape()[3];
    const Shape per_channel{channels};
    auto check = [&](const Shape& s, const char* what) {
        if (s != per_channel)
            throw shape_error(detail::concat("batch_norm2d: ", what, " has shape ", s,
                                             " but the input ", x.shape(), " has ", channels,
                                             " channels"));
    };
    check(running_mean.shape(), "running_mean");
    check(running_var.shape(), "running_var");
    if (gamma) check(gamma.shape(), "weight");
    if (beta) check(beta.shape(), "bias");

    // inv_std_c = 1 / sqrt(var_c + eps); y = x * a_c + b_c with a = gamma * inv_std.
    std::vector<T> inv_std(static_cast<std::size_t>(channels)), a(inv_std.size()),
        b(inv_std.size());
    for (index_t c = 0; c < channels; ++c) {
        const std::size_t k = static_cast<std::size_t>(c);
        inv_std[k] = T(1) / std::sqrt(running_var[c] + eps);
        a[k] = (gamma ? gamma.value()[c] : T(1)) * inv_std[k];
        b[k] = (beta ? beta.value()[c] : T(0)) - running_mean[c] * a[k];
    }
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    for (index_t n = 0; n < batch; ++n)
        for (index_t c = 0; c < channels; ++c) {
            const index_t offset = (n * channels + c) * plane;
            const std::size_t k = static_cast<std::size_t>(c);
            detail::array(y.data() + offset, plane) =
                detail::array(x.value().data() + offset, plane) * a[k] + b[k];
        }

    Tensor<T> mean_copy = running_mean;
    auto backward = [a, inv_std, mean = std::move(mean_copy), batch, channels, plane,
                     has_gamma = bool(gamma), has_beta = bool(beta)](
                        const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
        const std::size_t gamma_at = 1, beta_at = has_gamma ? 2 : 1;
        const bool want_gamma = has_gamma && sink.wants(gamma_at);
        const bool want_beta = has_beta && sink.wants(beta_at);
        for (index_t n = 0; n < batch; ++n)
            for (index_t c = 0; c < channels; ++c) {
                const index_t offset = (n * channels + c) * plane;
                const std::size_t k = static_cast<std::size_t>(c);
                auto g = detail::array(dy.data() + offset, plane);
                if (sink.wants(0)) detail::array(sink.of(0).data() + offset, plane) += g * a[k];
                if (want_gamma) {
                    auto xc = detail::array(self.input(0).value().data() + offset, plane);
                    sink.of(gamma_at)[c] += (g * (xc - mean[c])).sum() * inv_std[k];
                }
                if (want_beta) sink.of(beta_at)[c] += g.sum();
            }
    };
    if (gamma && beta)
        return x.tape().record("batch_norm2d", std::move(y), {x, gamma, beta}, std::move(backward));
    if (gamma)
        return x.tape().record("batch_norm2d", std::move(y), {x, gamma}, std::move(backward));
    if (beta) return x.tape().record("batch_norm2d", std::move(y), {x, beta}, std::move(backward));
    return x.tape().record("batch_norm2d", std::move(y), {x}, std::move(backward));
}

}  // namespace gradcam
