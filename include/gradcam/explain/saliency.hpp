// Input-space maps: the gradient of the target score with respect to the input pixels, under
// the three ReLU backward rules (vanilla gradient, Simonyan et al. 2014; guided
// backpropagation, Springenberg et al. 2015; deconvnet, Zeiler & Fergus 2014), and Guided
// Grad-CAM, the paper's high-resolution class-discriminative map.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "gradcam/explain/maps.hpp"

namespace gradcam {

template <class T>
struct SaliencyResult {
    Tensor<T> gradient;  // [N, C, H, W]: d score / d input under the chosen ReLU rule
    Tensor<T> outputs;
    std::vector<index_t> classes;
};

template <class T, Network<T> Net>
SaliencyResult<T> input_gradient(
    Net& net, const Tensor<T>& input, const std::type_identity_t<Target<T>>& target,
    ReluRule rule) {
    detail::expect_image_batch(input, "input_gradient");
    Tape<T> tape;
    const Var<T> x = tape.variable(input);
    const Var<T> outputs = run_network(net, tape, x);
    SaliencyResult<T> result;
    const Var<T> score = target.score(outputs, result.classes);
    if (!score.differentiable())
        throw argument_error("input_gradient: the target score does not depend on the input");
    result.gradient = tape.gradient(score, {x}, {.relu = rule})[0];
    result.outputs = outputs.value();
    return result;
}

template <class T, Network<T> Net>
SaliencyResult<T> vanilla_gradient(
    Net& net, const Tensor<T>& input, const std::type_identity_t<Target<T>>& target = {}) {
    return input_gradient(net, input, target, ReluRule::standard);
}

template <class T, Network<T> Net>
SaliencyResult<T> guided_backprop(
    Net& net, const Tensor<T>& input, const std::type_identity_t<Target<T>>& target = {}) {
    return input_gradient(net, input, target, ReluRule::guided);
}

template <class T, Network<T> Net>
SaliencyResult<T> deconvnet(
    Net& net, const Tensor<T>& input, const std::type_identity_t<Target<T>>& target = {}) {
    return input_gradient(net, input, target, ReluRule::deconvnet);
}

// An input gradient [N, C, H, W] as one map per image [N, H, W]: the largest magnitude over
// the channels (Simonyan et al. 2014), for comparing input-space maps with layer maps.
template <class T>
Tensor<T> channel_max_magnitude(const Tensor<T>& gradient) {
    detail::expect_rank(gradient.shape(), 4, "channel_max_magnitude input", "N, C, H, W");
    const index_t images = gradient.dim(0), channels = gradient.dim(1),
                  plane = gradient.dim(2) * gradient.dim(3);
    Tensor<T> out(Shape{images, gradient.dim(2), gradient.dim(3)});
    for (index_t n = 0; n < images; ++n)
        for (index_t c = 0; c < channels; ++c)
            for (index_t i = 0; i < plane; ++i)
                out[n * plane + i] = std::max(out[n * plane + i],
                                              std::abs(gradient[(n * channels + c) * plane + i]));
    return out;
}

template <class T>
struct GuidedGradCamResult {
    Tensor<T> map;     // [N, C, H, W]: guided backpropagation ⊙ upsampled Grad-CAM
    Tensor<T> guided;  // [N, C, H, W]: guided backpropagation alone
    CamResult<T> grad_cam;
};

// One forward, two backward passes over the same tape: the standard rule down to `layer` for
// Grad-CAM, the guided rule down to the input. The map is their pointwise product, Grad-CAM
// upsampled to the input and broadcast over the colour channels.
template <class T, Network<T> Net>
GuidedGradCamResult<T> guided_grad_cam(
    Net& net, const Tensor<T>& input, std::string_view layer,
    const std::type_identity_t<Target<T>>& target = {}) {
    detail::expect_image_batch(input, "guided_grad_cam");
    Tape<T> tape;
    tape.keep(std::string(layer));  // the Grad-CAM half reads it after the forward
    tape.expect_channel_sums(std::string(layer));
    const Var<T> x = tape.variable(input);
    const Var<T> outputs = run_network(net, tape, x);
    const Var<T> activations = tape.find(layer);
    detail::expect_feature_map(activations, layer, input.dim(0));
    std::vector<index_t> classes;
    const Var<T> score = target.score(outputs, classes);

    const Tensor<T> alpha = gradient_spatial_means(tape, score, activations);
    GuidedGradCamResult<T> r;
    r.grad_cam = make_cam_result(weighted_channel_sum(alpha, activations.value()), input.shape(),
                                 outputs.value(), std::move(classes));
    r.guided = tape.gradient(score, {x}, {.relu = ReluRule::guided})[0];

    r.map = r.guided;
    const index_t channels = input.dim(1), plane = input.dim(2) * input.dim(3);
    for (index_t n = 0; n < input.dim(0); ++n)
        for (index_t c = 0; c < channels; ++c)
            detail::array(r.map.data() + (n * channels + c) * plane, plane) *=
                detail::array(r.grad_cam.upsampled.data() + n * plane, plane);
    return r;
}

}  // namespace gradcam
