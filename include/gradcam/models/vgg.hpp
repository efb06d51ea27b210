// VGG (Simonyan & Zisserman, ICLR 2015) with torchvision's module names: features (convolutions,
// optional batch norm, ReLUs, max pools), avgpool, classifier (Linear, ReLU, Dropout, ...,
// Linear). The layer list, pooled size and classifier widths are configurable, so the same code
// builds VGG-16 and the small VGG trained on the shapes world.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "gradcam/nn/layers.hpp"
#include "gradcam/nn/sequential.hpp"

namespace gradcam::models {

struct VggConfig {
    static constexpr int max_pool = 0;  // in `layers`: a 2x2 max pool ("M" in torchvision)
    std::vector<int> layers = {64,  64,       max_pool, 128,      128, max_pool,
                               256, 256,      256,      max_pool, 512, 512,
                               512, max_pool, 512,      512,      512, max_pool};  // VGG-16
    bool batch_norm = false;
    index_t in_channels = 3;
    Size2 pooled_size = 7;                       // avgpool output
    std::vector<index_t> hidden = {4096, 4096};  // classifier widths before the last Linear
    double dropout = 0.5;
    index_t classes = 1000;
};

template <class T>
class Vgg : public nn::Module<T> {
  public:
    explicit Vgg(const VggConfig& config)
        : features_(this->template submodule<nn::Sequential<T>>("features")),
          avgpool_(
              this->template submodule<nn::AdaptiveAvgPool2d<T>>("avgpool", config.pooled_size)),
          classifier_(this->template submodule<nn::Sequential<T>>("classifier")) {
        index_t channels = config.in_channels;
        for (int layer : config.layers) {
            if (layer == VggConfig::max_pool) {
                features_.template emplace_back<nn::MaxPool2d<T>>(
                    Pool2dOptions{.kernel = 2, .stride = 2});
                continue;
            }
            if (layer < 0)
                throw argument_error(detail::concat("Vgg: layer width ", layer, " is negative"));
            features_.template emplace_back<nn::Conv2d<T>>(channels, layer, 3,
                                                           Conv2dOptions{.padding = 1});
            if (config.batch_norm) features_.template emplace_back<nn::BatchNorm2d<T>>(layer);
            features_.template emplace_back<nn::ReLU<T>>();
            last_relu_ = "features." + std::to_string(features_.size() - 1);
            channels = layer;
        }
        index_t width = channels * config.pooled_size.h * config.pooled_size.w;
        for (index_t hidden : config.hidden) {
            classifier_.template emplace_back<nn::Linear<T>>(width, hidden);
            classifier_.template emplace_back<nn::ReLU<T>>();
            classifier_.template emplace_back<nn::Dropout<T>>(config.dropout);
            width = hidden;
        }
        classifier_.template emplace_back<nn::Linear<T>>(width, config.classes);
    }

    // The ReLU after the last convolution ("features.29" in VGG-16, the paper's relu5_3): the
    // last spatial feature map before pooling, the layer Grad-CAM is usually computed at.
    const std::string& last_conv_layer() const { return last_relu_; }

  protected:
    Var<T> forward(const Var<T>& x) override {
        return classifier_(flatten(avgpool_(features_(x))));
    }

    // torchvision's initialisation: convolutions kaiming_normal(fan_out, relu) with zero bias,
    // linear layers N(0, 0.01) with zero bias.
    void reset_parameters(Random& random) override {
        for (nn::Module<T>* m : this->modules()) {
            if (auto* conv = dynamic_cast<nn::Conv2d<T>*>(m)) {
                detail::kaiming_normal_fan_out(conv->weight(), random);
                if (conv->bias()) conv->bias()->fill(T(0));
            } else if (auto* fc = dynamic_cast<nn::Linear<T>*>(m)) {
                for (T& v : fc->weight()) v = static_cast<T>(random.normal(0, 0.01));
                if (fc->bias()) fc->bias()->fill(T(0));
            }
        }
    }

  private:
    nn::Sequential<T>& features_;
    nn::AdaptiveAvgPool2d<T>& avgpool_;
    nn::Sequential<T>& classifier_;
    std::string last_relu_;
};

}  // namespace gradcam::models
