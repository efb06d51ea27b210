// The small networks of scripts/make_goldens.py, rebuilt from the library's modules with the
// same module names, so PyTorch's state_dict loads key for key.
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "gradcam/gradcam.hpp"
#include "gradcam/models/resnet.hpp"
#include "gradcam/models/vgg.hpp"

namespace small_nets {

using namespace gradcam;

inline std::string data_file(const std::string& name) {
    return std::string(GRADCAM_TEST_DATA) + "/" + name;
}

// features (conv-relu x2, pool, conv-relu x2, pool) -> avgpool 4x4 -> classifier: the library's
// VGG builder with a small configuration.
template <class T>
struct VggSmall : models::Vgg<T> {
    static models::VggConfig config() {
        constexpr int M = models::VggConfig::max_pool;
        return {.layers = {8, 8, M, 16, 16, M}, .pooled_size = 4, .hidden = {32}, .classes = 10};
    }
    VggSmall() : models::Vgg<T>(config()) {}
};

// conv1-bn1-relu-maxpool, one BasicBlock per stage (8 and 16 wide), global pooling, fc: the
// library's ResNet builder with a small configuration.
template <class T>
struct ResNetSmall : models::ResNet<T> {
    static models::ResNetConfig config() {
        return {.blocks = {1, 1},
                .widths = {8, 16},
                .stem_channels = 8,
                .stem_kernel = 3,
                .stem_stride = 1,
                .classes = 10};
    }
    ResNetSmall() : models::ResNet<T>(config()) {}
};

// Two inputs: image features (cnn, global pooling) gated by a question embedding, then an
// answer classifier. The question enters as a constant on the tape the image is on.
template <class T>
struct VqaSmall : nn::Module<T> {
    nn::Sequential<T>& cnn = this->template submodule<nn::Sequential<T>>("cnn");
    nn::Linear<T>& question = this->template submodule<nn::Linear<T>>("question", 12, 16);
    nn::Linear<T>& answer = this->template submodule<nn::Linear<T>>("answer", 16, 5);

    VqaSmall() {
        cnn.template emplace_back<nn::Conv2d<T>>(3, 8, 3, Conv2dOptions{.padding = 1});
        cnn.template emplace_back<nn::ReLU<T>>();
        cnn.template emplace_back<nn::Conv2d<T>>(8, 16, 3,
                                                 Conv2dOptions{.stride = 2, .padding = 1});
        cnn.template emplace_back<nn::ReLU<T>>();
    }
    Var<T> answer_scores(const Var<T>& image, const Var<T>& q) {
        Var<T> f = flatten(adaptive_avg_pool2d(cnn(image), 1));
        Var<T> h = relu(question(q));
        return answer(f * h);
    }
    Var<T> forward(const Var<T>&) override {
        throw unsupported_error("VqaSmall takes an image and a question: call answer_scores");
    }
};

// |actual - expected| <= relative * max|expected| everywhere: a tolerance relative to the
// tensor's scale, since maps cross zero.
template <class T>
void check_close(const Tensor<T>& actual, const Tensor<T>& expected, double relative,
                 const std::string& what) {
    INFO(what);
    REQUIRE(actual.shape() == expected.shape());
    const double scale = static_cast<double>(max_abs(expected));
    const double worst = static_cast<double>(max_abs_difference(actual, expected));
    CAPTURE(scale);
    CAPTURE(worst);
    CHECK(worst <= relative * scale + 1e-30);
}

}  // namespace small_nets
