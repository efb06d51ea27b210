// Batch normalisation of NCHW tensors (Ioffe & Szegedy 2015): each channel is normalised, then
// scaled by gamma and shifted by beta. At inference the running statistics are used; in
// training the batch's own statistics, which also update the running ones (as PyTorch does).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

namespace detail {

// gamma and beta may be null (affine=False).
template <class T>
void check_batch_norm(const Shape& x, const Shape* gamma, const Shape* beta,
                      const Tensor<T>& running_mean, const Tensor<T>& running_var) {
    expect_rank(x, 4, "batch_norm2d input", "N, C, H, W");
    const Shape per_channel{x[1]};
    auto check = [&](const Shape& s, const char* what) {
        if (s != per_channel)
            throw shape_error(concat("batch_norm2d: ", what, " has shape ", s, " but the input ", x,
                                     " has ", x[1], " channels"));
    };
    check(running_mean.shape(), "running_mean");
    check(running_var.shape(), "running_var");
    if (gamma) check(*gamma, "weight");
    if (beta) check(*beta, "bias");
}

// Whether running_var + eps > 0 for every channel (NaN is not). Counted over all channels, not
// tested in a loop that stops at the first failure, so that it vectorises.
template <class T>
bool variances_positive(const Tensor<T>& running_var, T eps) {
    index_t failures = 0;
    for (const T v : running_var.values()) failures += !(v + eps > 0);
    return failures == 0;
}

// 1 / sqrt(running_var + eps) per channel. (By std::sqrt, not Eigen's sqrt(), whose vectorised
// form differs from the scalar one in the last bit, so that channels would round by where the
// vector happens to be aligned.)
template <class T>
std::vector<T> running_inv_std(const Tensor<T>& running_var, T eps) {
    if (!variances_positive(running_var, eps)) {
        const auto values = running_var.values();
        const auto bad =
            std::find_if(values.begin(), values.end(), [eps](T v) { return !(v + eps > 0); });
        throw argument_error(concat("batch_norm2d: running_var[", bad - values.begin(),
                                    "] + eps = ", *bad + eps, " is not positive"));
    }
    const index_t n = running_var.size();
    std::vector<T> inv_std(static_cast<std::size_t>(n));
    const T* variance = running_var.data();
    for (index_t c = 0; c < n; ++c)
        inv_std[static_cast<std::size_t>(c)] = T(1) / std::sqrt(variance[c] + eps);
    return inv_std;
}

// The per-channel y = (x - mean_c) * a_c + b_c of a normalisation: a = gamma * inv_std,
// b = beta (gamma 1 and beta 0 when null).
template <class T>
void channel_affine(const Tensor<T>* gamma, const Tensor<T>* beta, const std::vector<T>& inv_std,
                    std::vector<T>& a, std::vector<T>& b) {
    const index_t n = static_cast<index_t>(inv_std.size());
    a = inv_std;
    if (gamma) array(a.data(), n) *= array(gamma->data(), n);
    b.assign(inv_std.size(), T(0));
    if (beta) std::copy_n(beta->data(), n, b.data());
}

// Normalises x with per-channel `mean` and `inv_std` (1 / sqrt(var + eps)) and records the op.
// With batch statistics, mean and inv_std are functions of x, which adds two terms to dx.
//   xhat = (x - mean_c) * inv_std_c,  y = gamma_c * xhat + beta_c = x * a_c + b_c
//   running statistics:  dx = a_c * dy
//   batch statistics:    dx = a_c * (dy - mean(dy) - xhat * mean(dy * xhat)), means over N, H, W
//   dgamma_c = sum dy * xhat,  dbeta_c = sum dy
template <class T>
Var<T> normalise_channels(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta,
                          std::vector<T> mean, std::vector<T> inv_std, bool batch_statistics) {
    const index_t batch = x.shape()[0], channels = x.shape()[1];
    const index_t plane = x.shape()[2] * x.shape()[3];
    std::vector<T> a, b;
    channel_affine(gamma ? &gamma.value() : nullptr, beta ? &beta.value() : nullptr, inv_std, a, b);
    Tensor<T> y = Tensor<T>::uninitialized(x.shape());
    parallel_for(batch * channels, y.size() >= parallel_grain, [&](index_t item, int) {
        const index_t offset = item * plane;
        const std::size_t k = static_cast<std::size_t>(item % channels);
        // (x - mean) * a + beta, not x * a + (beta - mean * a): exact when |mean| >> std.
        array(y.data() + offset, plane) =
            (array(x.value().data() + offset, plane) - mean[k]) * a[k] + b[k];
    });

    auto backward = [a, mean = std::move(mean), inv_std = std::move(inv_std), batch, channels,
                     plane, batch_statistics, has_gamma = bool(gamma), has_beta = bool(beta)](
                        const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
        const std::size_t gamma_at = 1, beta_at = has_gamma ? 2 : 1;
        const bool want_x = sink.wants(0);
        const bool want_gamma = has_gamma && sink.wants(gamma_at);
        const bool want_beta = has_beta && sink.wants(beta_at);
        const T count = static_cast<T>(batch * plane);
        const T* xs = self.input(0).value().data();
        bool fresh = false;
        // At inference dx = a_c * dy, element by element: dy's own tensor can take it.
        T* dx_all = !want_x            ? nullptr
                    : batch_statistics ? sink.of(0, fresh).data()
                                       : sink.of_elementwise(0, fresh).data();
        T* dgamma = want_gamma ? sink.of(gamma_at).data() : nullptr;
        T* dbeta = want_beta ? sink.of(beta_at).data() : nullptr;
        // Channels are independent: each writes its own slices of dx, dgamma and dbeta.
        parallel_for(channels, dy.size() >= parallel_grain, [&](index_t c, int) {
            const std::size_t k = static_cast<std::size_t>(c);
            T dy_sum = 0, dy_xhat_sum = 0;
            // The sums serve the parameters' gradients and the batch statistics' terms; an
            // explanation at inference (dx = a * dy) needs neither.
            const bool sums = want_gamma || want_beta || batch_statistics;
            for (index_t n = 0; sums && n < batch; ++n) {
                const index_t offset = (n * channels + c) * plane;
                auto g = array(dy.data() + offset, plane);
                dy_sum += g.sum();
                dy_xhat_sum += (g * (array(xs + offset, plane) - mean[k])).sum() * inv_std[k];
            }
            if (want_gamma) dgamma[c] += dy_xhat_sum;
            if (want_beta) dbeta[c] += dy_sum;
            if (!want_x) return;
            for (index_t n = 0; n < batch; ++n) {
                const index_t offset = (n * channels + c) * plane;
                auto g = array(dy.data() + offset, plane);
                auto dx = array(dx_all + offset, plane);
                if (!batch_statistics) {
                    assign_or_add(dx, g * a[k], fresh);
                } else {
                    auto xhat = (array(xs + offset, plane) - mean[k]) * inv_std[k];
                    assign_or_add(dx, a[k] * (g - dy_sum / count - xhat * (dy_xhat_sum / count)),
                                  fresh);
                }
            }
        });
    };
    // Reserved first: GCC 12 misreads push_back after a one-element initializer list as
    // writing out of bounds (-Warray-bounds).
    std::vector<Var<T>> inputs;
    inputs.reserve(3);
    inputs.push_back(x);
    if (gamma) inputs.push_back(gamma);
    if (beta) inputs.push_back(beta);
    return x.tape().record(batch_statistics ? "batch_norm2d (training)" : "batch_norm2d",
                           std::move(y), inputs, std::move(backward));
}

}  // namespace detail

// Inference: normalise with the running statistics, which are constants.
// gamma and beta may be empty Vars (affine=False).
template <class T>
Var<T> batch_norm2d(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta,
                    const Tensor<T>& running_mean, const Tensor<T>& running_var, T eps = T(1e-5)) {
    detail::check_batch_norm(x.shape(), gamma ? &gamma.shape() : nullptr,
                             beta ? &beta.shape() : nullptr, running_mean, running_var);
    return detail::normalise_channels(x, gamma, beta,
                                      std::vector<T>(running_mean.begin(), running_mean.end()),
                                      detail::running_inv_std(running_var, eps), false);
}

// Training: normalise with the batch's mean and biased variance over (N, H, W), and move the
// running statistics towards the batch's: r = (1 - momentum) * r + momentum * batch statistic,
// with the unbiased variance, as torch.nn.functional.batch_norm(training=True).
template <class T>
Var<T> batch_norm2d_training(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta,
                             Tensor<T>& running_mean, Tensor<T>& running_var, T momentum = T(0.1),
                             T eps = T(1e-5)) {
    detail::check_batch_norm(x.shape(), gamma ? &gamma.shape() : nullptr,
                             beta ? &beta.shape() : nullptr, running_mean, running_var);
    const index_t batch = x.shape()[0], channels = x.shape()[1];
    const index_t plane = x.shape()[2] * x.shape()[3], count = batch * plane;
    if (count < 2)
        throw shape_error(detail::concat("batch_norm2d (training): input ", x.shape(),
                                         " has one value per channel; batch statistics need more"));
    std::vector<T> mean(static_cast<std::size_t>(channels)), inv_std(mean.size());
    detail::parallel_for(
        channels, x.shape().numel() >= detail::parallel_grain, [&](index_t c, int) {
            double sum = 0, squares = 0;
            for (index_t n = 0; n < batch; ++n) {
                auto v = detail::array(x.value().data() + (n * channels + c) * plane, plane)
                             .template cast<double>();
                sum += v.sum();
                squares += v.square().sum();
            }
            const double m = sum / static_cast<double>(count);
            const double variance = std::max(squares / static_cast<double>(count) - m * m, 0.0);
            const std::size_t k = static_cast<std::size_t>(c);
            mean[k] = static_cast<T>(m);
            inv_std[k] = static_cast<T>(1.0 / std::sqrt(variance + static_cast<double>(eps)));
            const double unbiased =
                variance * static_cast<double>(count) / static_cast<double>(count - 1);
            running_mean[c] = static_cast<T>((1 - static_cast<double>(momentum)) * running_mean[c] +
                                             momentum * m);
            running_var[c] = static_cast<T>((1 - static_cast<double>(momentum)) * running_var[c] +
                                            momentum * unbiased);
        });
    return detail::normalise_channels(x, gamma, beta, std::move(mean), std::move(inv_std), true);
}

}  // namespace gradcam
