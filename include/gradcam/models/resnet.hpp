// ResNet (He et al., CVPR 2016) with torchvision's module names and state_dict keys: conv1,
// bn1, relu, maxpool, layer1..layerK of BasicBlock or Bottleneck, avgpool, fc. The stem, the
// widths and the depth are configurable, so the same code builds ResNet-50 and the small
// ResNet trained on the shapes world.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gradcam/nn/fusion.hpp"
#include "gradcam/nn/layers.hpp"
#include "gradcam/nn/sequential.hpp"
#include "gradcam/ops/arithmetic.hpp"

namespace gradcam::models {

// What the two block kinds share: the shortcut, identity or a strided 1x1 convolution with
// batch norm ("downsample") when the shape changes.
template <class T>
class ResidualBlock : public nn::Module<T> {
  protected:
    // Call last in the constructor: torchvision registers downsample after the block's layers.
    void add_downsample(index_t in, index_t out, index_t stride) {
        if (stride == 1 && in == out) return;
        downsample_ = &this->template submodule<nn::Sequential<T>>("downsample");
        downsample_->template emplace_back<nn::Conv2d<T>>(in, out, 1,
                                                          Conv2dOptions{.stride = stride}, false);
        downsample_->template emplace_back<nn::BatchNorm2d<T>>(out);
    }
    Var<T> shortcut(const Var<T>& x) { return downsample_ ? (*downsample_)(x) : x; }

  private:
    nn::Sequential<T>* downsample_ = nullptr;
};

// Two 3x3 convolutions with batch norm; out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut).
template <class T>
class BasicBlock : public ResidualBlock<T> {
  public:
    static constexpr index_t expansion = 1;

    BasicBlock(index_t in, index_t width, index_t stride)
        : conv1_(this->template submodule<nn::Conv2d<T>>(
              "conv1", in, width, 3, Conv2dOptions{.stride = stride, .padding = 1}, false)),
          bn1_(this->template submodule<nn::BatchNorm2d<T>>("bn1", width)),
          relu_(this->template submodule<nn::ReLU<T>>("relu")),
          conv2_(this->template submodule<nn::Conv2d<T>>("conv2", width, width, 3,
                                                         Conv2dOptions{.padding = 1}, false)),
          bn2_(this->template submodule<nn::BatchNorm2d<T>>("bn2", width)) {
        this->add_downsample(in, width * expansion, stride);
    }

  protected:
    Var<T> forward(const Var<T>& x) override {
        const Var<T> out = nn::conv_batch_norm(conv1_, bn1_, x, &relu_);
        return nn::conv_batch_norm(conv2_, bn2_, out, &relu_, [&] { return this->shortcut(x); });
    }

  private:
    nn::Conv2d<T>& conv1_;
    nn::BatchNorm2d<T>& bn1_;
    nn::ReLU<T>& relu_;
    nn::Conv2d<T>& conv2_;
    nn::BatchNorm2d<T>& bn2_;
};

// 1x1 reduce, 3x3 (carrying the stride, as torchvision's ResNet v1.5), 1x1 expand by 4.
template <class T>
class Bottleneck : public ResidualBlock<T> {
  public:
    static constexpr index_t expansion = 4;

    Bottleneck(index_t in, index_t width, index_t stride)
        : conv1_(this->template submodule<nn::Conv2d<T>>("conv1", in, width, 1, Conv2dOptions{},
                                                         false)),
          bn1_(this->template submodule<nn::BatchNorm2d<T>>("bn1", width)),
          conv2_(this->template submodule<nn::Conv2d<T>>(
              "conv2", width, width, 3, Conv2dOptions{.stride = stride, .padding = 1}, false)),
          bn2_(this->template submodule<nn::BatchNorm2d<T>>("bn2", width)),
          conv3_(this->template submodule<nn::Conv2d<T>>("conv3", width, width * expansion, 1,
                                                         Conv2dOptions{}, false)),
          bn3_(this->template submodule<nn::BatchNorm2d<T>>("bn3", width * expansion)),
          relu_(this->template submodule<nn::ReLU<T>>("relu")) {
        this->add_downsample(in, width * expansion, stride);
    }

  protected:
    Var<T> forward(const Var<T>& x) override {
        Var<T> out = nn::conv_batch_norm(conv1_, bn1_, x, &relu_);
        out = nn::conv_batch_norm(conv2_, bn2_, out, &relu_);
        return nn::conv_batch_norm(conv3_, bn3_, out, &relu_, [&] { return this->shortcut(x); });
    }

  private:
    nn::Conv2d<T>& conv1_;
    nn::BatchNorm2d<T>& bn1_;
    nn::Conv2d<T>& conv2_;
    nn::BatchNorm2d<T>& bn2_;
    nn::Conv2d<T>& conv3_;
    nn::BatchNorm2d<T>& bn3_;
    nn::ReLU<T>& relu_;
};

struct ResNetConfig {
    bool bottleneck = false;
    std::vector<int> blocks = {2, 2, 2, 2};             // per stage
    std::vector<index_t> widths = {64, 128, 256, 512};  // per stage, before the block's expansion
    index_t in_channels = 3;
    index_t stem_channels = 64;
    index_t stem_kernel = 7;
    index_t stem_stride = 2;
    bool stem_max_pool = true;  // 3x3, stride 2, padding 1
    index_t classes = 1000;
};

template <class T>
class ResNet : public nn::Module<T> {
  public:
    explicit ResNet(const ResNetConfig& config)
        : conv1_(this->template submodule<nn::Conv2d<T>>(
              "conv1", config.in_channels, config.stem_channels, config.stem_kernel,
              Conv2dOptions{.stride = config.stem_stride, .padding = config.stem_kernel / 2},
              false)),
          bn1_(this->template submodule<nn::BatchNorm2d<T>>("bn1", config.stem_channels)),
          relu_(this->template submodule<nn::ReLU<T>>("relu")) {
        if (config.blocks.empty() || config.blocks.size() != config.widths.size())
            throw argument_error(detail::concat("ResNet: ", config.blocks.size(),
                                                " stages of blocks but ", config.widths.size(),
                                                " widths"));
        for (std::size_t stage = 0; stage < config.blocks.size(); ++stage)
            if (config.blocks[stage] < 1 || config.widths[stage] < 1)
                throw argument_error(detail::concat("ResNet: stage ", stage + 1, " has ",
                                                    config.blocks[stage], " blocks of width ",
                                                    config.widths[stage], "; both must be positive"));
        if (config.stem_max_pool)
            maxpool_ = &this->template submodule<nn::MaxPool2d<T>>(
                "maxpool", Pool2dOptions{.kernel = 3, .stride = 2, .padding = 1});
        index_t channels = config.stem_channels;
        for (std::size_t stage = 0; stage < config.blocks.size(); ++stage) {
            auto& layer =
                this->template submodule<nn::Sequential<T>>("layer" + std::to_string(stage + 1));
            for (int b = 0; b < config.blocks[stage]; ++b) {
                const index_t stride = (stage > 0 && b == 0) ? 2 : 1;
                if (config.bottleneck) {
                    layer.template emplace_back<Bottleneck<T>>(channels, config.widths[stage],
                                                               stride);
                    channels = config.widths[stage] * Bottleneck<T>::expansion;
                } else {
                    layer.template emplace_back<BasicBlock<T>>(channels, config.widths[stage],
                                                               stride);
                    channels = config.widths[stage] * BasicBlock<T>::expansion;
                }
            }
            stages_.push_back(&layer);
        }
        avgpool_ = &this->template submodule<nn::AdaptiveAvgPool2d<T>>("avgpool", 1);
        fc_ = &this->template submodule<nn::Linear<T>>("fc", channels, config.classes);
    }

    nn::Linear<T>& fc() { return *fc_; }
    // The name of the last stage ("layer4"): the usual Grad-CAM and CAM layer.
    std::string last_stage() const { return "layer" + std::to_string(stages_.size()); }

  protected:
    Var<T> forward(const Var<T>& x) override {
        Var<T> y = nn::conv_batch_norm(conv1_, bn1_, x, &relu_);
        if (maxpool_) y = (*maxpool_)(y);
        for (nn::Sequential<T>* stage : stages_) y = (*stage)(y);
        return (*fc_)(flatten((*avgpool_)(y)));
    }

    // torchvision initialises convolutions with kaiming_normal(fan_out, relu) and batch norm
    // with weight 1, bias 0; the defaults of the layers do the rest.
    void reset_parameters(Random& random) override {
        for (nn::Module<T>* m : this->modules())
            if (auto* conv = dynamic_cast<nn::Conv2d<T>*>(m))
                detail::kaiming_normal_fan_out(conv->weight(), random);
    }

  private:
    nn::Conv2d<T>& conv1_;
    nn::BatchNorm2d<T>& bn1_;
    nn::ReLU<T>& relu_;
    nn::MaxPool2d<T>* maxpool_ = nullptr;
    std::vector<nn::Sequential<T>*> stages_;
    nn::AdaptiveAvgPool2d<T>* avgpool_ = nullptr;
    nn::Linear<T>* fc_ = nullptr;
};

}  // namespace gradcam::models
