// CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
// for a network ending in global average pooling and a linear classifier, the map of class c
// is M_c = sum_k w_k^c A^k, with w^c the classifier's row for c. No gradient is needed.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "gradcam/explain/maps.hpp"
#include "gradcam/nn/module.hpp"

namespace gradcam {

// `classifier_weight` is the final linear layer's weight [classes, K], K the channels of
// `feature_layer` (the layer that is globally average-pooled).
template <class T, Network<T> Net>
CamResult<T> cam(Net& net, const Tensor<T>& input,
                                          std::string_view feature_layer,
                                          const Tensor<T>& classifier_weight,
                                          const std::type_identity_t<Target<T>>& target = {}) {
    detail::expect_image_batch(input, "cam");
    if (!target.is_class_target())
        throw unsupported_error(
            "cam: CAM weights channels by the classifier row of a class; a "
            "function target has none (use grad_cam)");
    Tape<T> tape;
    tape.record_from(std::string(feature_layer));
    const Var<T> outputs = run_network(net, tape, tape.constant_reference(input));
    const Var<T> features = tape.find(feature_layer);
    detail::expect_feature_map(features, feature_layer, input.dim(0));
    const index_t channels = features.shape()[1];
    if (classifier_weight.rank() != 2 || classifier_weight.dim(1) != channels)
        throw shape_error(detail::concat("cam: classifier weight ", classifier_weight.shape(),
                                         " does not fit the ", channels, " channels of layer '",
                                         feature_layer, "' ", features.shape(),
                                         "; expected [classes, ", channels, "]"));
    std::vector<index_t> classes = target.classes_for(outputs.value());
    Tensor<T> w = Tensor<T>::uninitialized(Shape{input.dim(0), channels});
    for (std::size_t n = 0; n < classes.size(); ++n) {
        if (classes[n] >= classifier_weight.dim(0))
            throw argument_error(detail::concat("cam: class ", classes[n],
                                                " has no row in classifier weight ",
                                                classifier_weight.shape()));
        std::copy_n(classifier_weight.data() + classes[n] * channels, channels,
                    w.data() + static_cast<index_t>(n) * channels);
    }
    return make_cam_result(weighted_channel_sum(w, features.value()), input.shape(),
                           outputs.value(), std::move(classes));
}

// The same for a module network whose classifier is the Linear module at `classifier` ("fc").
template <class T>
CamResult<T> cam(nn::Module<T>& net, const Tensor<T>& input, std::string_view feature_layer,
                 std::string_view classifier, const std::type_identity_t<Target<T>>& target = {}) {
    return cam(net, input, feature_layer, net.tensor(std::string(classifier) + ".weight"), target);
}

}  // namespace gradcam
