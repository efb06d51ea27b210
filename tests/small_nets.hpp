// The small networks of scripts/make_goldens.py, rebuilt from the library's modules with the
// same module names, so PyTorch's state_dict loads key for key.
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "gradcam/gradcam.hpp"

namespace small_nets {

using namespace gradcam;

inline std::string data_file(const std::string& name) {
    return std::string(GRADCAM_TEST_DATA) + "/" + name;
}

// features (conv-relu x2, pool, conv-relu x2, pool) -> avgpool 4x4 -> classifier, like VGG.
template <class T>
struct VggSmall : nn::Module<T> {
    nn::Sequential<T>& features = this->template submodule<nn::Sequential<T>>("features");
    nn::AdaptiveAvgPool2d<T>& avgpool =
        this->template submodule<nn::AdaptiveAvgPool2d<T>>("avgpool", 4);
    nn::Sequential<T>& classifier = this->template submodule<nn::Sequential<T>>("classifier");

    VggSmall() {
        features.template emplace_back<nn::Conv2d<T>>(3, 8, 3, Conv2dOptions{.padding = 1});
        features.template emplace_back<nn::ReLU<T>>();
        features.template emplace_back<nn::Conv2d<T>>(8, 8, 3, Conv2dOptions{.padding = 1});
        features.template emplace_back<nn::ReLU<T>>();
        features.template emplace_back<nn::MaxPool2d<T>>(Pool2dOptions{.kernel = 2});
        features.template emplace_back<nn::Conv2d<T>>(8, 16, 3, Conv2dOptions{.padding = 1});
        features.template emplace_back<nn::ReLU<T>>();
        features.template emplace_back<nn::Conv2d<T>>(16, 16, 3, Conv2dOptions{.padding = 1});
        features.template emplace_back<nn::ReLU<T>>();
        features.template emplace_back<nn::MaxPool2d<T>>(Pool2dOptions{.kernel = 2});
        classifier.template emplace_back<nn::Linear<T>>(256, 32);
        classifier.template emplace_back<nn::ReLU<T>>();
        classifier.template emplace_back<nn::Dropout<T>>(0.5);
        classifier.template emplace_back<nn::Linear<T>>(32, 10);
    }
    Var<T> forward(const Var<T>& x) override { return classifier(flatten(avgpool(features(x)))); }
};

// torchvision's BasicBlock: two 3x3 convolutions with batch norm and a residual connection.
template <class T>
struct BasicBlock : nn::Module<T> {
    nn::Conv2d<T>& conv1;
    nn::BatchNorm2d<T>& bn1 =
        this->template submodule<nn::BatchNorm2d<T>>("bn1", conv1.weight().dim(0));
    nn::ReLU<T>& relu = this->template submodule<nn::ReLU<T>>("relu");
    nn::Conv2d<T>& conv2 = this->template submodule<nn::Conv2d<T>>(
        "conv2", conv1.weight().dim(0), conv1.weight().dim(0), 3, Conv2dOptions{.padding = 1},
        false);
    nn::BatchNorm2d<T>& bn2 =
        this->template submodule<nn::BatchNorm2d<T>>("bn2", conv1.weight().dim(0));
    nn::Sequential<T>* downsample = nullptr;

    BasicBlock(index_t in, index_t out, index_t stride)
        : conv1(this->template submodule<nn::Conv2d<T>>(
              "conv1", in, out, 3, Conv2dOptions{.stride = stride, .padding = 1}, false)) {
        if (stride != 1 || in != out) {
            downsample = &this->template submodule<nn::Sequential<T>>("downsample");
            downsample->template emplace_back<nn::Conv2d<T>>(
                in, out, 1, Conv2dOptions{.stride = stride}, false);
            downsample->template emplace_back<nn::BatchNorm2d<T>>(out);
        }
    }
    Var<T> forward(const Var<T>& x) override {
        Var<T> out = relu(bn1(conv1(x)));
        out = bn2(conv2(out));
        return relu(out + (downsample ? (*downsample)(x) : x));
    }
};

template <class T>
struct ResNetSmall : nn::Module<T> {
    nn::Conv2d<T>& conv1 = this->template submodule<nn::Conv2d<T>>(
        "conv1", 3, 8, 3, Conv2dOptions{.padding = 1}, false);
    nn::BatchNorm2d<T>& bn1 = this->template submodule<nn::BatchNorm2d<T>>("bn1", 8);
    nn::ReLU<T>& relu = this->template submodule<nn::ReLU<T>>("relu");
    nn::MaxPool2d<T>& maxpool = this->template submodule<nn::MaxPool2d<T>>(
        "maxpool", Pool2dOptions{.kernel = 3, .stride = 2, .padding = 1});
    nn::Sequential<T>& layer1 = this->template submodule<nn::Sequential<T>>("layer1");
    nn::Sequential<T>& layer2 = this->template submodule<nn::Sequential<T>>("layer2");
    nn::AdaptiveAvgPool2d<T>& avgpool =
        this->template submodule<nn::AdaptiveAvgPool2d<T>>("avgpool", 1);
    nn::Linear<T>& fc = this->template submodule<nn::Linear<T>>("fc", 16, 10);

    ResNetSmall() {
        layer1.template emplace_back<BasicBlock<T>>(8, 8, 1);
        layer2.template emplace_back<BasicBlock<T>>(8, 16, 2);
    }
    Var<T> forward(const Var<T>& x) override {
        Var<T> y = maxpool(relu(bn1(conv1(x))));
        return fc(flatten(avgpool(layer2(layer1(y)))));
    }
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
