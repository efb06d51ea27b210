// The parts every class activation map shares: reading a layer's activations and gradients
// off one forward and one backward, the channel arithmetic of the methods, and turning a raw
// map into the upsampled and normalised maps users look at.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/explain/network.hpp"
#include "gradcam/explain/target.hpp"
#include "gradcam/interpolate.hpp"

namespace gradcam {

template <class T>
struct CamResult {
    Tensor<T> raw;                 // [N, h, w] at the layer's resolution, signed (before the ReLU)
    Tensor<T> upsampled;           // [N, H, W]: ReLU(raw) resized bilinearly to the input size
    Tensor<T> normalised;          // [N, H, W] in [0, 1]: ReLU, min-max, resize, min-max
    Tensor<T> outputs;             // the network outputs of the explained forward pass
    std::vector<index_t> classes;  // the class explained per image; empty for function targets
};

// A layer's activations A and the gradient of the target score with respect to them.
template <class T>
struct LayerGradients {
    Tensor<T> activations;  // A: [N, K, h, w]
    Tensor<T> gradients;    // dy/dA: [N, K, h, w]
    Tensor<T> outputs;
    std::vector<index_t> classes;
};

// A layer's activations and the mean over each channel's positions of the target score's
// gradient with respect to them.
template <class T>
struct LayerGradientMeans {
    Tensor<T> activations;  // A: [N, K, h, w]
    Tensor<T> means;        // 1/(hw) sum_ij dy/dA_kij: [N, K]
    Tensor<T> outputs;
    std::vector<index_t> classes;
};

namespace detail {

template <class T>
void expect_feature_map(const Var<T>& layer_output, std::string_view layer, index_t images) {
    const Shape& s = layer_output.shape();
    if (s.rank() != 4 || s[0] != images)
        throw shape_error(concat("layer '", layer, "' has output shape ", s,
                                 "; class activation maps need a feature map [", images,
                                 ", channels, h, w]"));
}

}  // namespace detail

// d score / dA averaged over each channel's positions: [N, K] for A of shape [N, K, h, w].
template <class T>
Tensor<T> gradient_spatial_means(const Tape<T>& tape, const Var<T>& score, const Var<T>& A) {
    Tensor<T> means = tape.gradient_channel_sums(score, A);
    const T positions = static_cast<T>(A.shape()[2] * A.shape()[3]);
    for (T& m : means) m /= positions;
    return means;
}

namespace detail {

// One forward that keeps backward state only from `layer` on, then backward(tape, score, A,
// result) from the target score down to that layer.
template <class Result, class T, Network<T> Net, class Backward>
Result layer_backward(Net& net, const Tensor<T>& input, std::string_view layer,
                      const Target<T>& target, const char* method, bool channel_sums_only,
                      Backward backward) {
    expect_image_batch(input, method);
    Tape<T> tape;
    tape.record_from(std::string(layer));
    if (channel_sums_only) tape.expect_channel_sums(std::string(layer));
    const Var<T> outputs = run_network(net, tape, tape.constant_reference(input));
    const Var<T> activations = tape.find(layer);
    expect_feature_map(activations, layer, input.dim(0));
    Result result;
    const Var<T> score = target.score(outputs, result.classes);
    if (!score.differentiable())
        throw argument_error(concat("the target score does not depend on layer '", layer, "'"));
    backward(tape, score, activations, result);
    result.activations = activations.value();
    result.outputs = outputs.value();
    return result;
}

}  // namespace detail

// One forward and one backward to `layer`: everything a gradient-weighted CAM needs.
template <class T, Network<T> Net>
LayerGradients<T> layer_gradients(Net& net, const Tensor<T>& input, std::string_view layer,
                                  const Target<T>& target) {
    return detail::layer_backward<LayerGradients<T>>(
        net, input, layer, target, "layer_gradients", false,
        [](const Tape<T>& tape, const Var<T>& score, const Var<T>& A, LayerGradients<T>& r) {
            r.gradients = tape.gradient(score, {A})[0];
        });
}

// As layer_gradients, for a method that reads the gradient only through its mean over each
// channel (Grad-CAM's alpha): the backward may then stop short of the layer
// (Tape::gradient_channel_sums).
template <class T, Network<T> Net>
LayerGradientMeans<T> layer_gradient_means(Net& net, const Tensor<T>& input, std::string_view layer,
                                           const Target<T>& target) {
    return detail::layer_backward<LayerGradientMeans<T>>(
        net, input, layer, target, "layer_gradient_means", true,
        [](const Tape<T>& tape, const Var<T>& score, const Var<T>& A, LayerGradientMeans<T>& r) {
            r.means = gradient_spatial_means(tape, score, A);
        });
}

// [N, K, h, w] -> [N, K]: the mean over the spatial positions of each channel.
template <class T>
Tensor<T> spatial_mean(const Tensor<T>& maps) {
    detail::expect_rank(maps.shape(), 4, "spatial_mean input", "N, K, h, w");
    Tensor<T> out = Tensor<T>::uninitialized(Shape{maps.dim(0), maps.dim(1)});
    const index_t plane = maps.dim(2) * maps.dim(3);
    detail::VectorMap<T>(out.data(), out.size()) =
        detail::matrix(maps.data(), out.size(), plane).rowwise().mean();
    return out;
}

// weights [N, K] and A [N, K, h, w] -> [N, h, w]: sum_k weights[n, k] * A[n, k].
template <class T>
Tensor<T> weighted_channel_sum(const Tensor<T>& weights, const Tensor<T>& activations) {
    detail::expect_rank(activations.shape(), 4, "weighted_channel_sum activations", "N, K, h, w");
    const index_t n_images = activations.dim(0), channels = activations.dim(1);
    const index_t plane = activations.dim(2) * activations.dim(3);
    if (weights.shape() != Shape{n_images, channels})
        throw shape_error(detail::concat("weighted_channel_sum: weights ", weights.shape(),
                                         " do not match activations ", activations.shape()));
    Tensor<T> out =
        Tensor<T>::uninitialized(Shape{n_images, activations.dim(2), activations.dim(3)});
    for (index_t n = 0; n < n_images; ++n)
        detail::matrix(out.data() + n * plane, 1, plane).noalias() =
            detail::matrix(weights.data() + n * channels, 1, channels) *
            detail::matrix(activations.data() + n * channels * plane, channels, plane);
    return out;
}

// [N, K, h, w] -> [N, h, w]: the sum over channels.
template <class T>
Tensor<T> channel_sum(const Tensor<T>& maps) {
    detail::expect_rank(maps.shape(), 4, "channel_sum input", "N, K, h, w");
    return weighted_channel_sum(Tensor<T>(Shape{maps.dim(0), maps.dim(1)}, T(1)), maps);
}

// max(x, 0) elementwise.
template <class T>
Tensor<T> positive_part(Tensor<T> x) {
    for (T& v : x) v = std::max(v, T(0));
    return x;
}

// Each image's map ([N, ...]) shifted to minimum 0 and divided by (max + 1e-7), the constant
// pytorch-grad-cam uses, so a flat map stays 0 rather than dividing by zero.
template <class T>
Tensor<T> min_max_normalise(Tensor<T> maps) {
    const index_t images = maps.dim(0), per_image = maps.size() / std::max<index_t>(images, 1);
    for (index_t n = 0; n < images; ++n) {
        auto m = detail::array(maps.data() + n * per_image, per_image);
        m -= m.minCoeff();
        m /= m.maxCoeff() + T(1e-7);
    }
    return maps;
}

// The user-facing maps from a raw map [N, h, w] for an input [N, C, H, W].
template <class T>
CamResult<T> make_cam_result(Tensor<T> raw, const Shape& input_shape, Tensor<T> outputs,
                             std::vector<index_t> classes) {
    const index_t height = input_shape[2], width = input_shape[3];
    CamResult<T> r;
    const Tensor<T> positive = positive_part(raw);
    r.upsampled = resize_bilinear(positive, height, width);
    r.normalised = min_max_normalise(resize_bilinear(min_max_normalise(positive), height, width));
    r.raw = std::move(raw);
    r.outputs = std::move(outputs);
    r.classes = std::move(classes);
    return r;
}

}  // namespace gradcam
