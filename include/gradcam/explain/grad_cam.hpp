// Grad-CAM (Selvaraju et al., ICCV 2017) and the methods that differ from it only in how
// they weight a layer's channels given the gradient of the target score:
//   counterfactual Grad-CAM (same paper, Sec. 3), Grad-CAM++ (Chattopadhay et al. 2018),
//   XGrad-CAM (Fu et al. 2020), HiResCAM (Draelos & Carin 2020), LayerCAM (Jiang et al. 2021).
#pragma once

#include <string_view>
#include <type_traits>

#include "gradcam/explain/maps.hpp"

namespace gradcam {

// The shared part of the methods below: one forward and one backward to `layer`, then the
// method's own `raw_map(A, dy/dA)` ([N, K, h, w] each, giving [N, h, w]), then the maps users
// see (ReLU, upsampling, normalisation) in make_cam_result.
template <class T, Network<T> Net, class RawMap>
CamResult<T> gradient_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                          const Target<T>& target, RawMap raw_map) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    Tensor<T> raw = raw_map(g.activations, std::move(g.gradients));
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// weights[n, k] = weigh(A[n, k], dA[n, k]) over the h x w positions of each map (Eigen arrays).
template <class T, class Weigh>
Tensor<T> channel_weights(const Tensor<T>& A, const Tensor<T>& dA, Weigh weigh) {
    const index_t maps = A.dim(0) * A.dim(1), plane = A.dim(2) * A.dim(3);
    Tensor<T> weights = Tensor<T>::uninitialized(Shape{A.dim(0), A.dim(1)});
    for (index_t m = 0; m < maps; ++m)
        weights[m] = weigh(detail::array(A.data() + m * plane, plane),
                           detail::array(dA.data() + m * plane, plane));
    return weights;
}

// Grad-CAM:  alpha_k^c = 1/Z sum_ij dy^c / dA^k_ij,   L^c = ReLU(sum_k alpha_k^c A^k).
template <class T, Network<T> Net>
CamResult<T> grad_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                      const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradientMeans<T> g = layer_gradient_means(net, input, layer, target);
    const Tensor<T>& alpha = g.means;
    Tensor<T> raw = weighted_channel_sum(alpha, g.activations);  // ReLU'd in make_cam_result
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// Counterfactual explanation: the regions whose removal would raise the score, from the
// negated gradients:  alpha_k = 1/Z sum_ij -dy^c / dA^k_ij.
template <class T, Network<T> Net>
CamResult<T> counterfactual_grad_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                                     const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradientMeans<T> g = layer_gradient_means(net, input, layer, target);
    Tensor<T> alpha = std::move(g.means);
    for (T& a : alpha) a = -a;
    return make_cam_result(weighted_channel_sum(alpha, g.activations), input.shape(),
                           std::move(g.outputs), std::move(g.classes));
}

// Grad-CAM++ with the closed form for an exponential of the score, as pytorch-grad-cam has it
// (epsilon 1e-6):  a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3),  w_k = sum_ij a_ij ReLU(g_ij).
template <class T, Network<T> Net>
CamResult<T> grad_cam_plus_plus(Net& net, const Tensor<T>& input, std::string_view layer,
                                const std::type_identity_t<Target<T>>& target = {}) {
    const auto weight = [](const auto& a, const auto& g) {
        const T activation_sum = a.sum();
        const auto g2 = g.square(), g3 = g.cube();
        const auto alpha =
            (g != T(0)).select(g2 / (T(2) * g2 + activation_sum * g3 + T(1e-6)), T(0));
        return (alpha * g.max(T(0))).sum();
    };
    return gradient_cam(net, input, layer, target, [&](const Tensor<T>& A, const Tensor<T>& dy_dA) {
        return weighted_channel_sum(channel_weights(A, dy_dA, weight), A);
    });
}

// XGrad-CAM:  w_k = sum_ij (A^k_ij / sum_ab A^k_ab) dy / dA^k_ij,   map = sum_k w_k A^k.
template <class T, Network<T> Net>
CamResult<T> xgrad_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                       const std::type_identity_t<Target<T>>& target = {}) {
    const auto weight = [](const auto& a, const auto& g) {
        return (a * g).sum() / (a.sum() + T(1e-7));
    };
    return gradient_cam(net, input, layer, target, [&](const Tensor<T>& A, const Tensor<T>& dy_dA) {
        return weighted_channel_sum(channel_weights(A, dy_dA, weight), A);
    });
}

// HiResCAM: each activation weighted by its own gradient,  map = sum_k dy/dA^k ⊙ A^k.
template <class T, Network<T> Net>
CamResult<T> hires_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                       const std::type_identity_t<Target<T>>& target = {}) {
    return gradient_cam(net, input, layer, target, [](const Tensor<T>& A, Tensor<T> product) {
        detail::array(product.data(), product.size()) *= detail::array(A.data(), product.size());
        return channel_sum(product);
    });
}

// LayerCAM: as HiResCAM with only positive gradients,  map = sum_k ReLU(dy/dA^k) ⊙ A^k.
template <class T, Network<T> Net>
CamResult<T> layer_cam(Net& net, const Tensor<T>& input, std::string_view layer,
                       const std::type_identity_t<Target<T>>& target = {}) {
    return gradient_cam(net, input, layer, target, [](const Tensor<T>& A, Tensor<T> dy_dA) {
        Tensor<T> product = positive_part(std::move(dy_dA));
        detail::array(product.data(), product.size()) *= detail::array(A.data(), product.size());
        return channel_sum(product);
    });
}

}  // namespace gradcam
