// Grad-CAM (Selvaraju et al., ICCV 2017) and the methods that differ from it only in how
// they weight a layer's channels given the gradient of the target score:
//   counterfactual Grad-CAM (same paper, Sec. 3), Grad-CAM++ (Chattopadhay et al. 2018),
//   XGrad-CAM (Fu et al. 2020), HiResCAM (Draelos & Carin 2020), LayerCAM (Jiang et al. 2021).
#pragma once

#include <string_view>
#include <type_traits>

#include "gradcam/explain/maps.hpp"

namespace gradcam {

// Grad-CAM:  alpha_k^c = 1/Z sum_ij dy^c / dA^k_ij,   L^c = ReLU(sum_k alpha_k^c A^k).
template <class T, Network<T> Net>
CamResult<T> grad_cam(Net& net, const Tensor<T>& input,
                                               std::string_view layer,
                                               const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    const Tensor<T>& A = g.activations;
    const Tensor<T> alpha = spatial_mean(g.gradients);
    Tensor<T> raw = weighted_channel_sum(alpha, A);  // the ReLU is applied in make_cam_result
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// Counterfactual explanation: the regions whose removal would raise the score, from the
// negated gradients:  alpha_k = 1/Z sum_ij -dy^c / dA^k_ij.
template <class T, Network<T> Net>
CamResult<T> counterfactual_grad_cam(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    Tensor<T> alpha = spatial_mean(g.gradients);
    for (T& a : alpha) a = -a;
    Tensor<T> raw = weighted_channel_sum(alpha, g.activations);
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// Grad-CAM++ with the closed form for an exponential of the score, as commonly implemented:
//   a_ij = g^2 / (2 g^2 + sum_ab A_ab * g^3),  w_k = sum_ij a_ij * ReLU(g_ij),  map = sum_k w_k
//   A^k.
template <class T, Network<T> Net>
CamResult<T> grad_cam_plus_plus(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    const Tensor<T>& A = g.activations;
    const index_t maps = A.dim(0) * A.dim(1), plane = A.dim(2) * A.dim(3);
    Tensor<T> weights = Tensor<T>::uninitialized(Shape{A.dim(0), A.dim(1)});
    for (index_t m = 0; m < maps; ++m) {
        auto a = detail::array(A.data() + m * plane, plane);
        auto grad = detail::array(g.gradients.data() + m * plane, plane);
        const T activation_sum = a.sum();
        const auto g2 = grad.square(), g3 = grad.cube();
        const auto alpha =
            (grad != T(0)).select(g2 / (T(2) * g2 + activation_sum * g3 + T(1e-6)), T(0));
        weights[m] = (alpha * grad.max(T(0))).sum();
    }
    Tensor<T> raw = weighted_channel_sum(weights, A);
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// XGrad-CAM:  w_k = sum_ij (A^k_ij / sum_ab A^k_ab) * dy / dA^k_ij,   map = sum_k w_k A^k.
template <class T, Network<T> Net>
CamResult<T> xgrad_cam(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    const Tensor<T>& A = g.activations;
    const index_t maps = A.dim(0) * A.dim(1), plane = A.dim(2) * A.dim(3);
    Tensor<T> weights = Tensor<T>::uninitialized(Shape{A.dim(0), A.dim(1)});
    for (index_t m = 0; m < maps; ++m) {
        auto a = detail::array(A.data() + m * plane, plane);
        auto grad = detail::array(g.gradients.data() + m * plane, plane);
        weights[m] = (a * grad).sum() / (a.sum() + T(1e-7));
    }
    Tensor<T> raw = weighted_channel_sum(weights, A);
    return make_cam_result(std::move(raw), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// HiResCAM: each activation weighted by its own gradient,  map = sum_k dy/dA^k ⊙ A^k.
template <class T, Network<T> Net>
CamResult<T> hires_cam(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    Tensor<T> product = std::move(g.gradients);
    detail::array(product.data(), product.size()) *=
        detail::array(g.activations.data(), product.size());
    return make_cam_result(channel_sum(product), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

// LayerCAM: as HiResCAM with only positive gradients,  map = sum_k ReLU(dy/dA^k) ⊙ A^k.
template <class T, Network<T> Net>
CamResult<T> layer_cam(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    LayerGradients<T> g = layer_gradients(net, input, layer, target);
    Tensor<T> product = positive_part(std::move(g.gradients));
    detail::array(product.data(), product.size()) *=
        detail::array(g.activations.data(), product.size());
    return make_cam_result(channel_sum(product), input.shape(), std::move(g.outputs),
                           std::move(g.classes));
}

}  // namespace gradcam
